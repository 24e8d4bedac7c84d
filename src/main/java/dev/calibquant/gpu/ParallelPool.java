package dev.calibquant.gpu;

import dev.calibquant.cache.CacheMemoryLimitException;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.DeviceBuffer;
import java.util.ArrayList;
import java.util.List;

/**
 * Several device buffers of one fixed capacity that share one allocator: a region handed out lives at the same
 * element offset in every buffer. The kernels rely on that (keys and values, or σK, αK, σV, αV, are addressed with
 * one offset), so a sequence's keys and values are allocated together.
 *
 * <p>First-fit over a map of free ranges, coalescing on free; every offset and length is a multiple of
 * {@link #ALIGN_ELEMENTS}, which the kernels' 16-element alignment hints require. Thread-safe.
 */
final class ParallelPool implements AutoCloseable {
    static final int ALIGN_ELEMENTS = 64;

    private final String name;
    private final long capacity;
    private final int elementBytes;
    private final List<DeviceBuffer> buffers;
    private final RangeAllocator ranges;

    ParallelPool(CudaContext ctx, String name, long capacityElements, int elementBytes, int count) {
        if (capacityElements <= 0) {
            throw new IllegalArgumentException(name + ": pool capacity must be positive, got " + capacityElements);
        }
        this.name = name;
        this.capacity = roundUp(capacityElements);
        this.elementBytes = elementBytes;
        List<DeviceBuffer> made = new ArrayList<>(count);
        try {
            for (int i = 0; i < count; i++) {
                made.add(ctx.allocate(Math.multiplyExact(capacity, (long) elementBytes)));
            }
        } catch (RuntimeException e) {
            made.forEach(DeviceBuffer::close);
            throw e;
        }
        this.buffers = List.copyOf(made);
        this.ranges = new RangeAllocator(capacity, ALIGN_ELEMENTS);
    }

    static long roundUp(long elements) {
        return (elements + ALIGN_ELEMENTS - 1) / ALIGN_ELEMENTS * ALIGN_ELEMENTS;
    }

    DeviceBuffer buffer(int i) {
        return buffers.get(i);
    }

    long capacityElements() {
        return capacity;
    }

    int elementBytes() {
        return elementBytes;
    }

    synchronized long usedElements() {
        return ranges.used();
    }

    /** Bytes of all buffers together that are handed out. */
    synchronized long usedBytes() {
        return ranges.used() * elementBytes * buffers.size();
    }

    long capacityBytes() {
        return capacity * elementBytes * buffers.size();
    }

    /** A region of {@code elements} (rounded up to the alignment) in every buffer; its element offset. */
    synchronized long allocate(long elements, String what) {
        long want = ranges.roundUp(elements);
        return ranges.allocate(elements).orElseThrow(() -> new CacheMemoryLimitException(what + " in the " + name
                + " pool", want * elementBytes * buffers.size(), usedBytes(), capacityBytes()));
    }

    /** Returns a region; {@code elements} is the size it was allocated with. */
    synchronized void release(long offset, long elements) {
        ranges.release(offset, elements);
    }

    @Override
    public void close() {
        RuntimeException failure = null;
        for (DeviceBuffer b : buffers) {
            try {
                b.close();
            } catch (RuntimeException e) {
                if (failure == null) {
                    failure = e;
                } else {
                    failure.addSuppressed(e);
                }
            }
        }
        if (failure != null) {
            throw failure;
        }
    }
}
