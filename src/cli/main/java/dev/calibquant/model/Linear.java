package dev.calibquant.model;

import java.util.stream.IntStream;

/**
 * {@code y = x·Wᵀ + b} in fp32, for PyTorch's {@code [out][in]} weights. The weights are kept transposed
 * ({@code [in][out]}) so the inner loop is an axpy over a contiguous row, which the JIT vectorizes; each output is
 * still summed over {@code in} in order.
 */
final class Linear {
    private final int in;
    private final int out;
    private final float[] transposed;
    private final float[] bias;

    /** @param weight {@code [out][in]} row-major; @param bias {@code [out]} or null */
    Linear(float[] weight, float[] bias, int out, int in) {
        if (weight.length != (long) out * in || (bias != null && bias.length != out)) {
            throw new IllegalArgumentException("linear [" + out + "][" + in + "] given " + weight.length
                    + " weights and " + (bias == null ? "no" : bias.length) + " biases");
        }
        this.in = in;
        this.out = out;
        this.bias = bias;
        this.transposed = new float[weight.length];
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < in; i++) {
                transposed[i * out + o] = weight[o * in + i];
            }
        }
    }

    int in() {
        return in;
    }

    int out() {
        return out;
    }

    /** {@code rows} rows of {@code x} ({@code [rows][in]}) into a new {@code [rows][out]}; rows run in parallel. */
    float[] apply(float[] x, int rows) {
        if (x.length != (long) rows * in) {
            throw new IllegalArgumentException("linear input has " + x.length + " elements, not " + rows + " × " + in);
        }
        float[] y = new float[rows * out];
        if (rows == 1) {
            row(x, y, 0);
        } else {
            IntStream.range(0, rows).parallel().forEach(r -> row(x, y, r));
        }
        return y;
    }

    private void row(float[] x, float[] y, int r) {
        int yo = r * out;
        if (bias != null) {
            System.arraycopy(bias, 0, y, yo, out);
        }
        int xo = r * in;
        for (int i = 0; i < in; i++) {
            float a = x[xo + i];
            int wo = i * out;
            for (int o = 0; o < out; o++) {
                y[yo + o] += a * transposed[wo + o];
            }
        }
    }
}
