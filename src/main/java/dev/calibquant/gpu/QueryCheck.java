package dev.calibquant.gpu;

import dev.calibquant.quant.NonFiniteInputException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/** The host-side check of a decode step's fp16 queries, before anything reaches the device. */
final class QueryCheck {
    // The device reads fp16 little-endian whatever the host's order is, so the checks read it the same way (also
    // GpuKvCache's check of keys and values).
    static final ValueLayout.OfShort FP16_LE = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private QueryCheck() {}

    /**
     * Rejects a NaN or infinity in fp16 {@code queries [sequences][queryHeads][headDim]}, naming the sequence of the
     * batch, the query head and the channel of the first one.
     */
    static void requireFinite(MemorySegment queries, int sequences, int queryHeads, int headDim) {
        long n = (long) sequences * queryHeads * headDim;
        if (queries.byteSize() < 2 * n) {
            throw new IllegalArgumentException("queries hold " + queries.byteSize() + " bytes, fewer than " + 2 * n);
        }
        for (long i = 0; i < n; i++) {
            short bits = queries.get(FP16_LE, 2 * i);
            if ((bits & 0x7c00) == 0x7c00) {
                long row = i / headDim;
                throw new NonFiniteInputException("queries of sequence " + row / queryHeads + " of the batch",
                        (int) (row % queryHeads), -1, (int) (i % headDim), Float.float16ToFloat(bits));
            }
        }
    }
}
