package dev.calibquant.quant;

/** Conversions between fp32 and the two 16-bit float formats the cache stores (IEEE fp16 and bfloat16). */
public final class Half {
    private Half() {
    }

    public static float fp16ToFloat(short bits) {
        return Float.float16ToFloat(bits);
    }

    /** Round to nearest, ties to even; overflow gives infinity, as IEEE 754 requires. */
    public static short floatToFp16(float value) {
        return Float.floatToFloat16(value);
    }

    /** bf16 is the upper half of an fp32, so widening is a shift. */
    public static float bf16ToFloat(short bits) {
        return Float.intBitsToFloat(bits << 16);
    }

    /** Round to nearest, ties to even (what PyTorch does); NaN stays a (quiet) NaN. */
    public static short floatToBf16(float value) {
        int bits = Float.floatToRawIntBits(value);
        if (Float.isNaN(value)) {
            return (short) ((bits >>> 16) | 0x0040);
        }
        int roundingBias = 0x7FFF + ((bits >>> 16) & 1);
        return (short) ((bits + roundingBias) >>> 16);
    }
}
