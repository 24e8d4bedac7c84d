package dev.calibquant.quant;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;

/** Seeded random tensors written into segments, for tests and benchmarks. */
public final class TestTensors {
    private TestTensors() {
    }

    /** Standard normal values, with the given fraction of channels per head scaled ×8 (outliers, as in keys). */
    public static float[] normal(Random random, int kvHeads, int tokens, int headDim, int outlierChannels) {
        float[] x = new float[kvHeads * tokens * headDim];
        for (int h = 0; h < kvHeads; h++) {
            boolean[] outlier = new boolean[headDim];
            for (int i = 0; i < outlierChannels; i++) {
                outlier[random.nextInt(headDim)] = true;
            }
            for (int n = 0; n < tokens; n++) {
                for (int d = 0; d < headDim; d++) {
                    float v = (float) random.nextGaussian();
                    x[(h * tokens + n) * headDim + d] = outlier[d] ? 8 * v : v;
                }
            }
        }
        return x;
    }

    /** The values rounded to {@code dtype}, so that what is written reads back exactly. */
    public static float[] roundTo(DType dtype, float[] x) {
        float[] out = new float[x.length];
        for (int i = 0; i < x.length; i++) {
            out[i] = switch (dtype) {
                case FP16 -> Half.fp16ToFloat(Half.floatToFp16(x[i]));
                case BF16 -> Half.bf16ToFloat(Half.floatToBf16(x[i]));
                case FP32 -> x[i];
            };
        }
        return out;
    }

    public static MemorySegment write(Arena arena, DType dtype, float[] x) {
        MemorySegment s = arena.allocate((long) x.length * dtype.byteSize(), dtype.byteSize());
        for (int i = 0; i < x.length; i++) {
            Elements.write(s, dtype, i, x[i]);
        }
        return s;
    }

    public static float[] read(MemorySegment s, DType dtype) {
        float[] x = new float[(int) (s.byteSize() / dtype.byteSize())];
        for (int i = 0; i < x.length; i++) {
            x[i] = Elements.read(s, dtype, i);
        }
        return x;
    }
}
