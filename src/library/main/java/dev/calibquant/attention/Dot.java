package dev.calibquant.attention;

/** The two fp32 inner loops of attention, written so the JIT keeps several independent accumulations in flight. */
final class Dot {
    private Dot() {
    }

    /** {@code Σ a[ao+i]·b[bo+i]} over {@code i < n}, in eight interleaved partial sums. */
    static float dot(float[] a, int ao, float[] b, int bo, int n) {
        float s0 = 0;
        float s1 = 0;
        float s2 = 0;
        float s3 = 0;
        float s4 = 0;
        float s5 = 0;
        float s6 = 0;
        float s7 = 0;
        int i = 0;
        for (; i + 8 <= n; i += 8) {
            s0 = Math.fma(a[ao + i], b[bo + i], s0);
            s1 = Math.fma(a[ao + i + 1], b[bo + i + 1], s1);
            s2 = Math.fma(a[ao + i + 2], b[bo + i + 2], s2);
            s3 = Math.fma(a[ao + i + 3], b[bo + i + 3], s3);
            s4 = Math.fma(a[ao + i + 4], b[bo + i + 4], s4);
            s5 = Math.fma(a[ao + i + 5], b[bo + i + 5], s5);
            s6 = Math.fma(a[ao + i + 6], b[bo + i + 6], s6);
            s7 = Math.fma(a[ao + i + 7], b[bo + i + 7], s7);
        }
        for (; i < n; i++) {
            s0 = Math.fma(a[ao + i], b[bo + i], s0);
        }
        return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
    }

    /**
     * {@code y[i] += w·x[i]} over {@code i < n}. Both arrays start at 0 on purpose: with offsets the JIT (C2, JDK 25)
     * cannot rule out that x and y overlap and leaves the loop scalar, about 3× slower.
     */
    static void axpy(float w, float[] x, float[] y, int n) {
        for (int i = 0; i < n; i++) {
            y[i] = Math.fma(w, x[i], y[i]);
        }
    }
}
