package dev.calibquant.gpu;

import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.Half;
import dev.calibquant.quant.NonFiniteInputException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/** Host-side checks of fp16 inputs (queries, keys, values) before anything reaches the device. */
final class Fp16Check {
    // The device reads fp16 little-endian whatever the host's order is, so the checks read it the same way.
    private static final ValueLayout.OfShort FP16_LE = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private Fp16Check() {}

    private static final ValueLayout.OfLong WORD = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final long FP16_EXPONENTS = 0x7c007c007c007c00L;
    private static final long FP32_EXPONENTS = 0x7f8000007f800000L;

    /** Index of the first NaN or infinity among the first {@code count} fp16 values of {@code seg}, or -1. */
    static long firstNonFinite(MemorySegment seg, long count) {
        if (seg.byteSize() < 2 * count) {
            throw new IllegalArgumentException("the segment holds " + seg.byteSize() + " bytes, fewer than " + 2 * count);
        }
        // four values per 64-bit word: a lane is non-finite when its exponent bits are all ones
        long words = count / 4;
        for (long w = 0; w < words; w++) {
            if (hasFullLane(seg.get(WORD, 8 * w), FP16_EXPONENTS, 0x0001000100010001L, 0x8000800080008000L)) {
                return firstNonFiniteFrom(seg, 4 * w, count);
            }
        }
        return firstNonFiniteFrom(seg, 4 * words, count);
    }

    private static long firstNonFiniteFrom(MemorySegment seg, long from, long count) {
        for (long i = from; i < count; i++) {
            if ((seg.get(FP16_LE, 2 * i) & 0x7c00) == 0x7c00) { // exponent bits all ones
                return i;
            }
        }
        return -1;
    }

    /** Index of the first NaN or infinity among the first {@code count} fp32 values of {@code seg}, or -1. */
    static long firstNonFiniteFp32(MemorySegment seg, long count) {
        long words = count / 2;
        for (long w = 0; w < words; w++) {
            if (hasFullLane(seg.get(WORD, 8 * w), FP32_EXPONENTS, 0x0000000100000001L, 0x8000000080000000L)) {
                return Float.isFinite(seg.getAtIndex(ValueLayout.JAVA_FLOAT_UNALIGNED, 2 * w)) ? 2 * w + 1 : 2 * w;
            }
        }
        if (2 * words < count && !Float.isFinite(seg.getAtIndex(ValueLayout.JAVA_FLOAT_UNALIGNED, 2 * words))) {
            return 2 * words;
        }
        return -1;
    }

    /**
     * Whether some lane of {@code word} has every bit of {@code mask}'s lane set: the lanes of {@code (word & mask) ^
     * mask} are zero exactly there, and never have their top bit set, so the classic has-zero-lane test applies.
     */
    private static boolean hasFullLane(long word, long mask, long ones, long highs) {
        long t = (word & mask) ^ mask;
        return ((t - ones) & ~t & highs) != 0;
    }

    /** The fp16 value at {@code index}, as the device reads it. */
    static float valueAt(MemorySegment seg, long index) {
        return Float.float16ToFloat(seg.get(FP16_LE, 2 * index));
    }

    /**
     * Rejects a NaN or infinity in fp16 {@code queries [sequences][queryHeads][headDim]}, naming the sequence of the
     * batch, the query head and the channel of the first one.
     */
    static void requireFiniteQueries(MemorySegment queries, int sequences, int queryHeads, int headDim) {
        long i = firstNonFinite(queries, (long) sequences * queryHeads * headDim);
        if (i >= 0) {
            long row = i / headDim;
            throw new NonFiniteInputException("queries of sequence " + row / queryHeads + " of the batch",
                    (int) (row % queryHeads), -1, (int) (i % headDim), valueAt(queries, i));
        }
    }

    /**
     * {@code queries [sequences][queryHeads][headDim]} of {@code type} (little-endian, as {@link Elements} reads them)
     * rounded to the fp16 the kernels read, in {@code arena}. A NaN or infinity is refused as by
     * {@link #requireFiniteQueries}, and so is a finite value that rounds to infinity in fp16 (|v| ≥ 65520): the
     * kernels would turn it into NaN outputs.
     */
    static MemorySegment toFiniteFp16Queries(Arena arena, MemorySegment queries, DType type, int queryHeads,
            int headDim) {
        MemorySegment fp16 = arena.allocate(2 * (queries.byteSize() / type.byteSize()), 16);
        writeFiniteFp16Queries(queries, type, queryHeads, headDim, fp16);
        return fp16;
    }

    /**
     * {@link #toFiniteFp16Queries}, written into the first bytes of {@code fp16} (its contents are undefined after a
     * refusal). fp16 queries are checked and copied in bulk.
     */
    static void writeFiniteFp16Queries(MemorySegment queries, DType type, int queryHeads, int headDim,
            MemorySegment fp16) {
        long rowElements = (long) queryHeads * headDim;
        long n = queries.byteSize() / type.byteSize();
        if (queryHeads <= 0 || headDim <= 0 || n * type.byteSize() != queries.byteSize() || n % rowElements != 0) {
            throw new IllegalArgumentException("queries of " + queries.byteSize() + " bytes are not " + type + " ["
                    + "sequences][" + queryHeads + "][" + headDim + "]");
        }
        if (fp16.byteSize() < 2 * n) {
            throw new IllegalArgumentException("a destination of " + fp16.byteSize() + " bytes cannot hold " + n
                    + " fp16 queries");
        }
        if (type == DType.FP16) {
            requireFiniteQueries(queries, (int) (n / rowElements), queryHeads, headDim);
            MemorySegment.copy(queries, 0, fp16, 0, 2 * n);
            return;
        }
        for (long i = 0; i < n; i++) {
            float v = Elements.read(queries, type, i);
            short h = Half.floatToFp16(v);
            if ((h & 0x7c00) == 0x7c00) { // exponent bits all ones: NaN or infinity
                long row = i / headDim;
                String what = "queries of sequence " + row / queryHeads + " of the batch"
                        + (Float.isFinite(v) ? " (" + v + " rounds to infinity in fp16)" : "");
                throw new NonFiniteInputException(what, (int) (row % queryHeads), -1, (int) (i % headDim),
                        Half.fp16ToFloat(h));
            }
            fp16.setAtIndex(FP16_LE, i, h);
        }
    }
}
