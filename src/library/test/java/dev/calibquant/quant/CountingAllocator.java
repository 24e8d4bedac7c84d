package dev.calibquant.quant;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SegmentAllocator;

/** Allocates from an arena and counts calls and bytes, so tests can check "nothing was allocated". */
final class CountingAllocator implements SegmentAllocator {
    private final Arena arena;
    int calls;
    long bytes;

    CountingAllocator(Arena arena) {
        this.arena = arena;
    }

    @Override
    public MemorySegment allocate(long byteSize, long byteAlignment) {
        calls++;
        bytes += byteSize;
        return arena.allocate(byteSize, byteAlignment);
    }
}
