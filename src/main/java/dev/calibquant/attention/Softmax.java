package dev.calibquant.attention;

/** The exponentials of a softmax, unnormalized: the callers divide their weighted sums once at the end. */
final class Softmax {
    private Softmax() {
    }

    /** Replaces {@code s[from, from+n)} by {@code exp(s − max)} and returns their sum (fp32). */
    static float expInPlace(float[] s, int from, int n) {
        float max = Float.NEGATIVE_INFINITY;
        for (int i = from; i < from + n; i++) {
            max = Math.max(max, s[i]);
        }
        float sum = 0;
        for (int i = from; i < from + n; i++) {
            float e = (float) Math.exp(s[i] - max);
            s[i] = e;
            sum += e;
        }
        return sum;
    }
}
