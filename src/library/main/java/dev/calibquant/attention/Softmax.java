package dev.calibquant.attention;

/** The exponentials of a softmax, unnormalized: the callers divide their weighted sums once at the end. */
final class Softmax {
    private static final float LOG2E = 1.44269504f;
    /** ln 2 split so that {@code n·LN2_HI} is exact for |n| < 2^8 (LN2_HI has 16 significant bits). */
    private static final float LN2_HI = 0.693145751953125f;
    private static final float LN2_LO = 1.42860677e-6f;
    /** 1.5·2^23: adding it rounds a float to an integer held in the low mantissa bits. */
    private static final float SHIFTER = 12582912f;
    /** Inputs are raised to this, so that 2^n stays a normal fp32 number. */
    static final float MIN_ARGUMENT = -87f;

    private Softmax() {
    }

    /** Replaces {@code s[from, from+n)} by {@code exp(s − max)} and returns their sum (fp32). */
    static float expInPlace(float[] s, int from, int n) {
        float max = Float.NEGATIVE_INFINITY;
        for (int i = from; i < from + n; i++) {
            max = Math.max(max, s[i]);
        }
        for (int i = from; i < from + n; i++) {
            s[i] = exp(s[i] - max);
        }
        float s0 = 0;
        float s1 = 0;
        float s2 = 0;
        float s3 = 0;
        int i = from;
        for (; i + 4 <= from + n; i += 4) {
            s0 += s[i];
            s1 += s[i + 1];
            s2 += s[i + 2];
            s3 += s[i + 3];
        }
        for (; i < from + n; i++) {
            s0 += s[i];
        }
        return (s0 + s1) + (s2 + s3);
    }

    /**
     * {@code e^x} for {@code x ≤ 0} in fp32: {@code x = n·ln2 + r} with |r| ≤ ln2/2, {@code e^r} by its degree-7
     * Taylor polynomial (truncation below 2^−27 relative), times {@code 2^n} built in the exponent bits. Relative
     * error at most 3·2^−24 (checked by a test against {@link Math#exp}) for {@code x ≥ −87}; smaller x give
     * {@code e^−87 ≈ 1.6e−38}, which is 0 in any fp32 sum that also holds the top weight 1.
     */
    static float exp(float x) {
        float y = Math.max(x, MIN_ARGUMENT);
        float t = Math.fma(y, LOG2E, SHIFTER);
        float nf = t - SHIFTER;
        int n = Float.floatToRawIntBits(t) - 0x4B400000;
        float r = Math.fma(-nf, LN2_HI, y);
        r = Math.fma(-nf, LN2_LO, r);
        float p = 1.98412698e-4f;
        p = Math.fma(p, r, 1.38888889e-3f);
        p = Math.fma(p, r, 8.33333333e-3f);
        p = Math.fma(p, r, 4.16666667e-2f);
        p = Math.fma(p, r, 1.66666667e-1f);
        p = Math.fma(p, r, 0.5f);
        p = Math.fma(p, r, 1f);
        p = Math.fma(p, r, 1f);
        return p * Float.intBitsToFloat((n + 127) << 23);
    }
}
