package dev.calibquant.gpu;

import java.util.Map;
import java.util.OptionalLong;
import java.util.TreeMap;

/**
 * First-fit allocation of aligned ranges of {@code [0, capacity)}, coalescing freed neighbours. Pure bookkeeping
 * (no memory of its own), so it can be tested without a GPU. Not thread-safe: its owner synchronizes.
 */
final class RangeAllocator {
    private final long capacity;
    private final long align;
    private final TreeMap<Long, Long> free = new TreeMap<>(); // offset -> length
    private long used;

    RangeAllocator(long capacity, long align) {
        if (align <= 0 || capacity <= 0 || capacity % align != 0) {
            throw new IllegalArgumentException("capacity " + capacity + " must be a positive multiple of " + align);
        }
        this.capacity = capacity;
        this.align = align;
        free.put(0L, capacity);
    }

    long capacity() {
        return capacity;
    }

    long used() {
        return used;
    }

    long roundUp(long length) {
        return Math.ceilDiv(length, align) * align;
    }

    /** The offset of a free range of {@code length} (rounded up to the alignment), or empty when none fits. */
    OptionalLong allocate(long length) {
        if (length <= 0) {
            throw new IllegalArgumentException("allocation of " + length);
        }
        long want = roundUp(length);
        for (Map.Entry<Long, Long> e : free.entrySet()) {
            long offset = e.getKey();
            long size = e.getValue(); // read before removing: TreeMap reuses the entry object on removal
            if (size >= want) {
                free.remove(offset);
                if (size > want) {
                    free.put(offset + want, size - want);
                }
                used += want;
                return OptionalLong.of(offset);
            }
        }
        return OptionalLong.empty();
    }

    /** Frees a range previously allocated with {@code length}; a range that is not allocated is an error. */
    void release(long offset, long length) {
        long len = roundUp(length);
        if (offset < 0 || offset % align != 0 || len <= 0 || offset + len > capacity) {
            throw new IllegalArgumentException("[" + offset + ", +" + len + ") is not a range of [0, " + capacity + ")");
        }
        Map.Entry<Long, Long> before = free.floorEntry(offset);
        Map.Entry<Long, Long> after = free.ceilingEntry(offset);
        if ((before != null && before.getKey() + before.getValue() > offset)
                || (after != null && offset + len > after.getKey())) {
            throw new IllegalStateException("[" + offset + ", +" + len + ") overlaps a free range: double free?");
        }
        long start = offset;
        long merged = len;
        if (before != null && before.getKey() + before.getValue() == offset) {
            start = before.getKey();
            merged += before.getValue();
            free.remove(before.getKey());
        }
        if (after != null && offset + len == after.getKey()) {
            merged += after.getValue();
            free.remove(after.getKey());
        }
        free.put(start, merged);
        used -= len;
    }

    int freeRanges() {
        return free.size();
    }

    /** The longest free range, 0 when full. */
    long largestFree() {
        long largest = 0;
        for (long size : free.values()) {
            largest = Math.max(largest, size);
        }
        return largest;
    }
}
