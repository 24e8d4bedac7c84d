package dev.calibquant.model;

/** The element-wise and per-row operations of the model, fp32 values with double sums where a row is reduced. */
final class Ops {
    private static final double SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

    private Ops() {
    }

    /** PyTorch's LayerNorm over rows of {@code width}: biased variance, {@code (x − mean)/sqrt(var + eps)·w + b}. */
    static float[] layerNorm(float[] x, int width, float[] weight, float[] bias, float eps) {
        float[] y = new float[x.length];
        for (int r = 0; r < x.length / width; r++) {
            int o = r * width;
            double mean = 0;
            for (int i = 0; i < width; i++) {
                mean += x[o + i];
            }
            mean /= width;
            double var = 0;
            for (int i = 0; i < width; i++) {
                double d = x[o + i] - mean;
                var += d * d;
            }
            var /= width;
            double inv = 1 / Math.sqrt(var + eps);
            for (int i = 0; i < width; i++) {
                y[o + i] = (float) ((x[o + i] - mean) * inv) * weight[i] + bias[i];
            }
        }
        return y;
    }

    /** {@code x / sqrt(mean(x²) + eps) · w} over rows of {@code width}. */
    static float[] rmsNorm(float[] x, int width, float[] weight, float eps) {
        float[] y = new float[x.length];
        for (int r = 0; r < x.length / width; r++) {
            int o = r * width;
            double sum = 0;
            for (int i = 0; i < width; i++) {
                sum += (double) x[o + i] * x[o + i];
            }
            float inv = (float) (1 / Math.sqrt(sum / width + eps));
            for (int i = 0; i < width; i++) {
                y[o + i] = x[o + i] * inv * weight[i];
            }
        }
        return y;
    }

    /** GELU, tanh approximation (PyTorch {@code approximate="tanh"}), in place. */
    static void geluTanh(float[] x) {
        for (int i = 0; i < x.length; i++) {
            double v = x[i];
            x[i] = (float) (0.5 * v * (1 + Math.tanh(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v))));
        }
    }

    /** {@code silu(gate) · up}, into {@code gate}. */
    static void swiglu(float[] gate, float[] up) {
        for (int i = 0; i < gate.length; i++) {
            double g = gate[i];
            gate[i] = (float) (g / (1 + Math.exp(-g))) * up[i];
        }
    }

    static void addInPlace(float[] x, float[] delta) {
        for (int i = 0; i < x.length; i++) {
            x[i] += delta[i];
        }
    }

    /** Index of the largest value; the first one on ties (as {@code torch.argmax} does). */
    static int argmax(float[] x) {
        int best = 0;
        for (int i = 1; i < x.length; i++) {
            if (x[i] > x[best]) {
                best = i;
            }
        }
        return best;
    }

    /**
     * Softmax attention of one head: for each query row {@code t}, over key rows {@code 0..limit(t)−1}, where
     * {@code limit(t) = causal ? t + 1 : keys}. Row {@code j} of an array is read at {@code [j·stride + offset,
     * +dim)}; the result is added to {@code out}'s rows.
     */
    static void attendHead(float[] q, int qStride, int qOffset, float[] k, int kStride, int kOffset, float[] v,
            int vStride, int vOffset, int queries, int keys, int dim, boolean causal, float[] out, int outStride,
            int outOffset) {
        float scale = (float) (1 / Math.sqrt(dim));
        float[] scores = new float[keys];
        for (int t = 0; t < queries; t++) {
            int limit = causal ? t + 1 : keys;
            int qo = t * qStride + qOffset;
            float max = Float.NEGATIVE_INFINITY;
            for (int j = 0; j < limit; j++) {
                int ko = j * kStride + kOffset;
                float s = 0;
                for (int d = 0; d < dim; d++) {
                    s += q[qo + d] * k[ko + d];
                }
                scores[j] = s * scale;
                max = Math.max(max, scores[j]);
            }
            double sum = 0;
            for (int j = 0; j < limit; j++) {
                scores[j] = (float) Math.exp(scores[j] - max);
                sum += scores[j];
            }
            int oo = t * outStride + outOffset;
            for (int j = 0; j < limit; j++) {
                float p = (float) (scores[j] / sum);
                int vo = j * vStride + vOffset;
                for (int d = 0; d < dim; d++) {
                    out[oo + d] += p * v[vo + d];
                }
            }
        }
    }
}
