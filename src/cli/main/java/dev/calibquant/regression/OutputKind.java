package dev.calibquant.regression;

/**
 * What a recorded output is, which fixes how far a correct run may stray from the recorded one. Each run's output
 * element {@code i} carries its own bound {@code t_i} from the arithmetic (computed by the GPU side); two runs may
 * differ by {@link #combine} of their bounds. The derivations are the {@link #note()}s, written into the
 * expectations file beside the numbers.
 */
public enum OutputKind {
    EXACT("Bit-exact copies (append_token rows): tolerance 0 per element and for the sums."),
    CODES("Codes are exact except where the exact x/σ + z lies within the fp32 error of a rounding boundary, "
            + "|u − ⌊u⌋ − ½| ≤ 2^-21·(|x/σ| + |α/σ| + L) (GpuVerification.nearRoundingBoundary); there either neighbour "
            + "is legal. Per element t_i = 1 at such a tie, else 0; two runs differ by at most max(t_rec, t_now) per "
            + "element and by Σt_rec + Σt_now in the sums (integers: no rounding)."),
    SCALES("Each run's σ and α are within 2 ulps of the float32 CPU quantizer (β − α is rounded before the division "
            + "by L); measured in ulps of the run's own value that is t_i = 2·2·ulp(x_i) (a factor 2 for a binade "
            + "crossing). Two runs differ by t_rec + t_now per element; sums by Σt_rec + Σt_now + 2n·2^-53·Σ|x| "
            + "(double summation)."),
    ATTENTION("Each run's output element is within t_i = tol_row of exact (double-precision) attention over the cache "
            + "contents it ran on: tol_row = (6E + 2^-21 + (BN + N/BN + items + 8)·2^-24)·Vmax, "
            + "E = (D + 4)·2^-23·‖q‖₁·Kmax/√D (GpuVerification.attentionTolerance), a bound for any fp32 summation "
            + "order and any work split, so for any card and driver. With identical cache contents (cache_sha256) two "
            + "runs differ by t_rec + t_now per element, sums by Σt_rec + Σt_now + 2n·2^-53·Σ|x|. Where the cache "
            + "contents differ (the quantizer's legal rounding ties), attention is held to the CPU reference only.");

    private final String note;

    OutputKind(String note) {
        this.note = note;
    }

    /** How this kind's tolerance is derived. */
    public String note() {
        return note;
    }

    /** The most two correct runs may differ at one element, given each run's own bound there. */
    public double combine(double recorded, double now) {
        return this == CODES ? Math.max(recorded, now) : recorded + now;
    }
}
