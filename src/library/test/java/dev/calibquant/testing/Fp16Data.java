package dev.calibquant.testing;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import java.util.Random;

/** Random keys, values and queries as the GPU tests feed them: normal values rounded to fp16, in native segments. */
public final class Fp16Data {
    private Fp16Data() {}

    /**
     * Normal values rounded to fp16, {@code [a][b][d]}; in each {@code [a]} the first {@code outliers} channels are
     * scaled ×8, like the outlier channels of real post-RoPE keys.
     */
    public static float[] normal(Random random, int a, int b, int d, int outliers) {
        float[] x = new float[a * b * d];
        for (int i = 0; i < x.length; i++) {
            double v = random.nextGaussian() * ((i % d) < outliers ? 8 : 1);
            x[i] = Float.float16ToFloat(Float.floatToFloat16((float) v));
        }
        return x;
    }

    /** {@code x} as fp16 in a new 16-byte-aligned segment of {@code arena}. */
    public static MemorySegment fp16(Arena arena, float[] x) {
        return Elements.allocateFrom(arena, DType.FP16, x);
    }
}
