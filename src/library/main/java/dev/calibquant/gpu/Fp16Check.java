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

    /** Index of the first NaN or infinity among the first {@code count} fp16 values of {@code seg}, or -1. */
    static long firstNonFinite(MemorySegment seg, long count) {
        if (seg.byteSize() < 2 * count) {
            throw new IllegalArgumentException("the segment holds " + seg.byteSize() + " bytes, fewer than " + 2 * count);
        }
        for (long i = 0; i < count; i++) {
            if ((seg.get(FP16_LE, 2 * i) & 0x7c00) == 0x7c00) { // exponent bits all ones
                return i;
            }
        }
        return -1;
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
        long rowElements = (long) queryHeads * headDim;
        long n = queries.byteSize() / type.byteSize();
        if (queryHeads <= 0 || headDim <= 0 || n * type.byteSize() != queries.byteSize() || n % rowElements != 0) {
            throw new IllegalArgumentException("queries of " + queries.byteSize() + " bytes are not " + type + " ["
                    + "sequences][" + queryHeads + "][" + headDim + "]");
        }
        MemorySegment fp16 = arena.allocate(2 * n, 16);
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
        return fp16;
    }
}
