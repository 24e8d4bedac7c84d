package dev.calibquant.cache;

import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SegmentAllocator;
import java.util.Random;

/** Random keys and values for tests: standard normal, rounded to the dtype. */
final class KvData {

    private KvData() {
    }

    /** {@code [kvHeads][tokens][headDim]} standard normal elements (never zero in practice). */
    static MemorySegment normal(SegmentAllocator alloc, Random random, DType dtype, int kvHeads, int tokens,
            int headDim) {
        long count = (long) kvHeads * tokens * headDim;
        MemorySegment data = alloc.allocate(count * dtype.byteSize(), 8);
        for (long i = 0; i < count; i++) {
            Elements.write(data, dtype, i, (float) random.nextGaussian());
        }
        return data;
    }

    /** The bytes of row {@code (head, token)} of a {@code [kvHeads][rows][headDim]} tensor. */
    static MemorySegment row(MemorySegment data, DType dtype, int rows, int headDim, int head, int token) {
        long rowBytes = (long) headDim * dtype.byteSize();
        return data.asSlice(((long) head * rows + token) * rowBytes, rowBytes);
    }
}
