package dev.calibquant.quant;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * Reads and writes elements of a {@link DType} in a memory segment, little-endian, by element index.
 *
 * <p>Indices are in elements, not bytes. The segment's own bounds checks apply; callers check shapes first.
 */
public final class Elements {
    public static final ValueLayout.OfShort SHORT_LE =
            ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    public static final ValueLayout.OfFloat FLOAT_LE =
            ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private Elements() {
    }

    /**
     * {@code values} as {@code type} (rounded to nearest even for fp16 and bf16), little-endian, in a new segment of
     * {@code allocator} aligned to 16 bytes: the form the cache takes keys, values and queries in.
     */
    public static MemorySegment allocateFrom(java.lang.foreign.SegmentAllocator allocator, DType type,
            float[] values) {
        MemorySegment s = allocator.allocate((long) values.length * type.byteSize(), 16);
        for (int i = 0; i < values.length; i++) {
            write(s, type, i, values[i]);
        }
        return s;
    }

    public static float read(MemorySegment segment, DType type, long index) {
        return switch (type) {
            case FP16 -> Half.fp16ToFloat(segment.getAtIndex(SHORT_LE, index));
            case BF16 -> Half.bf16ToFloat(segment.getAtIndex(SHORT_LE, index));
            case FP32 -> segment.getAtIndex(FLOAT_LE, index);
        };
    }

    public static void write(MemorySegment segment, DType type, long index, float value) {
        switch (type) {
            case FP16 -> segment.setAtIndex(SHORT_LE, index, Half.floatToFp16(value));
            case BF16 -> segment.setAtIndex(SHORT_LE, index, Half.floatToBf16(value));
            case FP32 -> segment.setAtIndex(FLOAT_LE, index, value);
        }
    }

    /**
     * Widens {@code count} consecutive elements starting at element {@code index} into {@code dst[dstOffset..]}.
     * {@code shortScratch} must hold at least {@code count} values when {@code type} is 16-bit (one bulk copy, then a
     * conversion loop the JIT can vectorize).
     */
    public static void readRow(MemorySegment segment, DType type, long index, float[] dst, int dstOffset, int count,
            short[] shortScratch) {
        switch (type) {
            case FP32 -> MemorySegment.copy(segment, FLOAT_LE, index * 4, dst, dstOffset, count);
            case FP16 -> {
                MemorySegment.copy(segment, SHORT_LE, index * 2, shortScratch, 0, count);
                for (int i = 0; i < count; i++) {
                    dst[dstOffset + i] = Float.float16ToFloat(shortScratch[i]);
                }
            }
            case BF16 -> {
                MemorySegment.copy(segment, SHORT_LE, index * 2, shortScratch, 0, count);
                for (int i = 0; i < count; i++) {
                    dst[dstOffset + i] = Float.intBitsToFloat(shortScratch[i] << 16);
                }
            }
        }
    }
}
