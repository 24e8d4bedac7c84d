package dev.calibquant.attention;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.CalibrationPolicy;
import dev.calibquant.quant.Dequantizer;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.MemorySegment;
import java.util.List;

/**
 * Attention of one query head in double precision (exact for our purposes: its own error is ~2^−50 relative), written
 * independently of the production code, together with a worst-case bound on how far an fp32 implementation of the
 * CPU fast path may land from it. The derivation, stage by stage (u = 2^−24, γ_k = k·u/(1 − k·u)):
 *
 * <ol>
 *   <li><b>Scores.</b> Every term {@code q_d·x_d} of a score reaches the result through at most D + 6 roundings
 *   (the fold {@code q_d·σ_d}, a multiply by the code, at most D additions in any order — table entries, lookups,
 *   partial sums — the offset term, the 1/√D factor and its own rounding), so
 *   {@code |ŝ_n − s_n| ≤ E_n = γ_{D+6}·Σ_d |q_d|·m_{n,d}/√D}, with {@code m = |k|} for full-precision keys and
 *   {@code m = σ·code + |α|} for quantized ones (the magnitudes of the summands actually added). Wide key channels
 *   add a second table sum over their W low bits ({@code q_c·σ_c/2}, at most W additions) and its scaling and
 *   addition to the score: D + W + 10 roundings for those spans.</li>
 *   <li><b>Calibration</b> {@code g(x) = (x − γ)·F(R) + γ + τmin}, {@code R = δ − γ},
 *   {@code F(r) = (r − T)/(r + 1e−8)} (clamped at 0 under CLAMP_AT_ZERO), {@code T = τmin + τmax}. With every
 *   score of the span off by at most {@code E = max E_n}, γ and δ are off by at most E, R by 2E, and since F is
 *   increasing, {@code |F(R̂) − F(R)| ≤ ΔF = max(|F(R ± 2E) − F(R)|)}; so
 *   {@code |ĝ − g| ≤ (R + 2E)·ΔF + 2E·|F| + E}. The fp32 evaluation adds at most
 *   {@code 8u·(R·(|F| + ΔF + 1) + |γ| + |δ| + T + |g| + E)}, and the 1e−8 that fp32 absorbs into a range above
 *   ~0.2 changes g by at most {@code (R + 2E)·(R + 2E + T)·1.1e−8/R̂_min²}. A one-token span is exact: x − γ = 0 in both.</li>
 *   <li><b>Softmax.</b> A score off by η changes its exponential by a factor within {@code e^{±η}}; forming
 *   {@code ŝ − m̂} in fp32 adds {@code u·|ŝ − m̂|} to the exponent, the fp32 exp at most 3u more (its own test
 *   checks that), and an argument below −87 gives e^−87 instead of a smaller weight: at most
 *   {@code N·e^−87·max|v|} over all tokens, since the top weight is 1. The shift
 *   {@code m̂ − m} is common to all tokens and cancels. With {@code a_n} the total exponent error of token n and
 *   {@code A = Σ p_k·(e^{a_k} − 1)}, the normalized weight has relative error
 *   {@code r_n ≤ (e^{a_n} − 1 + A + 2γ_N)/(1 − A − γ_N)} (γ_N for the fp32 sum of N exponentials).</li>
 *   <li><b>Output</b> {@code o_d = Σ_n p_n·v_{n,d}}: the weight errors give {@code Σ p_n r_n·|v_{n,d}|}; the fp32
 *   accumulation at most {@code γ_{N+160}·Σ_n p_n (1 + r_n)·m_{n,d}}, plus u|o| for the fp32 result. The depth
 *   160 beyond N: a histogram bin sums at most N weights; folding a 256-bin histogram adds at most 15 (fold) + 128
 *   (block sum) + 15 (sum over code values) additions and one multiply by the code; then σ·sum, α·Σp, their sum,
 *   one addition per span into the accumulator, and the final division — fewer than 160 for any bit width.</li>
 * </ol>
 */
final class BoundedOracle {
    static final double U = 0x1p-24;
    /** The fast path's exp returns e^−87 for arguments below −87 instead of a smaller number. */
    static final double EXP_FLOOR = Math.exp(-87);

    record Result(double[] out, double[] bound) {
    }

    static double gamma(int k) {
        return k * U / (1 - k * U);
    }

    static Result attend(LayerKvView view, int kvh, float[] q, int qOff, Calibration calibration) {
        int d = view.headDim();
        List<QuantizedSpan> spans = view.visualSpans();
        int n = view.fullTokens();
        for (QuantizedSpan s : spans) {
            n += s.tokens();
        }
        double[] key = new double[n * d];
        double[] keyMag = new double[n * d];
        double[] value = new double[n * d];
        double[] valueMag = new double[n * d];
        long base = (long) kvh * view.fullCapacity() * d;
        for (int i = 0; i < view.fullTokens() * d; i++) {
            key[i] = Elements.read(view.fullKeys(), view.dtype(), base + i);
            keyMag[i] = Math.abs(key[i]);
            value[i] = Elements.read(view.fullValues(), view.dtype(), base + i);
            valueMag[i] = Math.abs(value[i]);
        }
        int at = view.fullTokens();
        int[] depth = new int[n]; // roundings a score term goes through: D + 6, and the low-bit sum's with wide keys
        java.util.Arrays.fill(depth, d + 6);
        for (QuantizedSpan s : spans) {
            rebuild(s, kvh, true, key, keyMag, at * d);
            rebuild(s, kvh, false, value, valueMag, at * d);
            if (s.wideKeys() != null) {
                java.util.Arrays.fill(depth, at, at + s.tokens(), d + 6 + s.wideKeys().channels() + 4);
            }
            at += s.tokens();
        }

        double rootD = Math.sqrt(d);
        double[] score = new double[n];
        double[] eta = new double[n];
        for (int t = 0; t < n; t++) {
            double dot = 0;
            double mag = 0;
            for (int i = 0; i < d; i++) {
                dot += q[qOff + i] * key[t * d + i];
                mag += Math.abs(q[qOff + i]) * keyMag[t * d + i];
            }
            score[t] = dot / rootD;
            eta[t] = gamma(depth[t]) * mag / rootD;
        }

        at = view.fullTokens();
        for (QuantizedSpan s : spans) {
            if (calibration.enabled()) {
                calibrate(score, eta, at, at + s.tokens(), calibration);
            }
            at += s.tokens();
        }

        double max = Double.NEGATIVE_INFINITY;
        double etaMax = 0;
        for (int t = 0; t < n; t++) {
            max = Math.max(max, score[t]);
            etaMax = Math.max(etaMax, eta[t]);
        }
        double sum = 0;
        double[] p = new double[n];
        for (int t = 0; t < n; t++) {
            p[t] = Math.exp(score[t] - max);
            sum += p[t];
        }
        double[] a = new double[n];
        double weightedA = 0;
        for (int t = 0; t < n; t++) {
            p[t] /= sum;
            a[t] = eta[t] + U * (Math.abs(score[t] - max) + 2 * etaMax) + 3.01 * U;
            weightedA += p[t] * Math.expm1(a[t]);
        }
        double gN = gamma(n);
        double[] out = new double[d];
        double[] bound = new double[d];
        double gAcc = gamma(n + 160);
        for (int i = 0; i < d; i++) {
            double o = 0;
            double weightError = 0;
            double roundError = 0;
            for (int t = 0; t < n; t++) {
                // the relative weight error; past 1 − ΣpA − γN ≤ 0 (a span whose calibration divides by a range within
                // its own error) the first-order bound no longer holds and no finite bound is claimed
                double denominator = 1 - weightedA - gN;
                double r = denominator > 0 ? (Math.expm1(a[t]) + weightedA + 2 * gN) / denominator : Double.POSITIVE_INFINITY;
                o += p[t] * value[t * d + i];
                weightError += p[t] * r * Math.abs(value[t * d + i]);
                roundError += p[t] * (1 + r) * valueMag[t * d + i];
            }
            out[i] = o;
            bound[i] = weightError + gAcc * roundError + U * Math.abs(o) + n * EXP_FLOOR * maxAbsValue(value, i, d);
            if (Double.isNaN(bound[i])) {
                // a span whose score range is within its own error (0 < δ − γ ≤ 2e): calibration divides by it, and
                // no finite bound exists; ∞ (not NaN) says so, and the element is compared only for finiteness
                bound[i] = Double.POSITIVE_INFINITY;
            }
        }
        return new Result(out, bound);
    }

    private static double maxAbsValue(double[] value, int channel, int d) {
        double m = 0;
        for (int i = channel; i < value.length; i += d) {
            m = Math.max(m, Math.abs(value[i]));
        }
        return m;
    }

    /** Rebuilt elements {@code α + σ·code} and their summand magnitudes {@code σ·code + |α|}, rows of one head. */
    private static void rebuild(QuantizedSpan s, int kvh, boolean keys, double[] x, double[] mag, int off) {
        int d = s.headDim();
        int[] codes = Dequantizer.fullCodes(s, kvh, keys);
        boolean[] wide = new boolean[d]; // a wide key channel's full code counts steps of half the stored scale
        if (keys && s.wideKeys() != null) {
            for (int c : s.wideKeys().channelsOf(kvh, d)) {
                wide[c] = true;
            }
        }
        Granularity granularity = keys ? s.keyGranularity() : s.valueGranularity();
        MemorySegment scale = keys ? s.keyScale() : s.valueScale();
        MemorySegment offset = keys ? s.keyOffset() : s.valueOffset();
        int perHead = granularity == Granularity.PER_TOKEN ? s.tokens() : d;
        for (int t = 0; t < s.tokens(); t++) {
            for (int i = 0; i < d; i++) {
                long p = (long) kvh * perHead + (granularity == Granularity.PER_TOKEN ? t : i);
                double sigma = s.param(scale, p) * (wide[i] ? 0.5 : 1);
                double alpha = s.param(offset, p);
                int c = codes[t * d + i];
                x[off + t * d + i] = alpha + sigma * c;
                mag[off + t * d + i] = sigma * c + Math.abs(alpha);
            }
        }
    }

    private static double factor(double r, double t, CalibrationPolicy policy) {
        double f = (r - t) / (r + 1e-8);
        return policy == CalibrationPolicy.CLAMP_AT_ZERO ? Math.max(0, f) : f;
    }

    private static void calibrate(double[] score, double[] eta, int from, int to, Calibration c) {
        double gamma = Double.POSITIVE_INFINITY;
        double delta = Double.NEGATIVE_INFINITY;
        double e = 0;
        for (int t = from; t < to; t++) {
            gamma = Math.min(gamma, score[t]);
            delta = Math.max(delta, score[t]);
            e = Math.max(e, eta[t]);
        }
        double range = delta - gamma;
        double tau = c.tauMin() + c.tauMax();
        double f = factor(range, tau, c.policy());
        double low = factor(Math.max(0, range - 2 * e), tau, c.policy());
        double high = factor(range + 2 * e, tau, c.policy());
        double df = Math.max(Math.abs(low - f), Math.abs(high - f));
        double rangeMin = Math.max(range - 2 * e, 0);
        for (int t = from; t < to; t++) {
            double g = (score[t] - gamma) * f + gamma + c.tauMin();
            double bound;
            if (to - from == 1 || range == 0) {
                // one token, or every score of the span bit-identical (e.g. all codes equal): x − γ is exactly 0 in
                // both implementations, so g = γ + τmin carries only γ's error
                bound = e + 2 * U * (Math.abs(g) + Math.abs(gamma) + c.tauMin());
            } else {
                double epsilonTerm = rangeMin > 0
                        ? (range + 2 * e) * (range + 2 * e + tau) * 1.1e-8 / (rangeMin * rangeMin)
                        : Double.POSITIVE_INFINITY;
                bound = (range + 2 * e) * df + 2 * e * Math.abs(f) + e
                        + 8 * U * (range * (Math.abs(f) + df + 1) + Math.abs(gamma) + Math.abs(delta) + tau
                        + Math.abs(g) + e)
                        + epsilonTerm;
            }
            score[t] = g;
            eta[t] = bound;
        }
    }
}
