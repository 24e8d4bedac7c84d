package dev.calibquant.attention;

/** Per-thread working arrays of the CPU decode path, grown on demand and reused across calls. */
final class Scratch {
    float[] scores = new float[0];
    float[] rows = new float[0];
    short[] shorts = new short[0];
    byte[] codes = new byte[0];
    long[] words = new long[0];
    float[] tables = new float[0];
    float[] weights = new float[0];
    float[] bias = new float[0];
    float[] sums = new float[0];
    float[] acc = new float[0];
    /** One row at offset 0 and one accumulator per head, for {@link Dot#axpy}. */
    float[] row = new float[0];
    float[][] headAcc = new float[0][];
    float[] channelSums = new float[0];
    float[] keyScale = new float[0];
    float[] keyOffset = new float[0];
    float[] valueScale = new float[0];
    float[] valueOffset = new float[0];

    static float[] grow(float[] a, int n) {
        return a.length >= n ? a : new float[Math.max(n, a.length + a.length / 2)];
    }

    /** {@code heads} zeroed arrays of at least {@code dim} floats. */
    static float[][] zeroed(float[][] a, int heads, int dim) {
        float[][] out = a.length >= heads && heads > 0 && a[0].length >= dim ? a : new float[heads][dim];
        for (int g = 0; g < heads; g++) {
            java.util.Arrays.fill(out[g], 0, dim, 0f);
        }
        return out;
    }

    static short[] grow(short[] a, int n) {
        return a.length >= n ? a : new short[Math.max(n, a.length + a.length / 2)];
    }

    static long[] grow(long[] a, int n) {
        return a.length >= n ? a : new long[Math.max(n, a.length + a.length / 2)];
    }

    static byte[] grow(byte[] a, int n) {
        return a.length >= n ? a : new byte[Math.max(n, a.length + a.length / 2)];
    }
}
