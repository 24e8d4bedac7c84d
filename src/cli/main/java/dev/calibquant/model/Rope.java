package dev.calibquant.model;

/**
 * Rotary position embedding, "rotate half" form (Llama, InternLM): channel {@code i < D/2} pairs with
 * {@code i + D/2} and both turn by {@code position · θ^(−2i/D)}. Angles, cosines and sines are computed in double
 * and rounded to fp32, as {@code tools/model/train.py} builds its table.
 */
final class Rope {
    private final int headDim;
    private final double[] inverseFrequency;

    Rope(int headDim, double theta) {
        this.headDim = headDim;
        this.inverseFrequency = new double[headDim / 2];
        for (int i = 0; i < headDim / 2; i++) {
            inverseFrequency[i] = 1 / Math.pow(theta, 2.0 * i / headDim);
        }
    }

    /** {@code [D/2]} cosines then {@code [D/2]} sines for a position. */
    float[] table(int position) {
        int half = headDim / 2;
        float[] t = new float[headDim];
        for (int i = 0; i < half; i++) {
            double angle = position * inverseFrequency[i];
            t[i] = (float) Math.cos(angle);
            t[half + i] = (float) Math.sin(angle);
        }
        return t;
    }

    /** Rotates {@code heads} head vectors of {@code x} starting at {@code offset}, in place. */
    void rotate(float[] x, int offset, int heads, float[] table) {
        int half = headDim / 2;
        for (int h = 0; h < heads; h++) {
            int o = offset + h * headDim;
            for (int i = 0; i < half; i++) {
                float x1 = x[o + i];
                float x2 = x[o + half + i];
                float c = table[i];
                float s = table[half + i];
                x[o + i] = x1 * c - x2 * s;
                x[o + half + i] = x2 * c + x1 * s;
            }
        }
    }
}
