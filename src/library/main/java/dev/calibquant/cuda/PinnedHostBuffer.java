package dev.calibquant.cuda;

import static dev.calibquant.cuda.bindings.CudaDriver.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/** Page-locked host memory from {@code cuMemHostAlloc}, seen from Java as a bounded {@link MemorySegment}. */
public final class PinnedHostBuffer extends NativeResource {
    private final MemorySegment pointer;
    private final MemorySegment segment;

    private PinnedHostBuffer(CudaContext owner, MemorySegment pointer, long bytes) {
        super(owner);
        this.pointer = pointer;
        // The segment's lifetime follows this owner: a global-scope view, guarded by checkOpen() on every access path.
        this.segment = pointer.reinterpret(bytes);
    }

    static PinnedHostBuffer allocate(CudaContext owner, long bytes) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(C_POINTER);
            InjectedFaults.before("cuMemHostAlloc");
            Driver.check(cuMemHostAlloc(out, bytes, CU_MEMHOSTALLOC_PORTABLE()), "cuMemHostAlloc(" + bytes + " bytes)");
            return new PinnedHostBuffer(owner, out.get(C_POINTER, 0), bytes);
        }
    }

    public long byteSize() {
        return segment.byteSize();
    }

    /**
     * The memory as a segment. It must not be used after this buffer is closed; fetch it again when in doubt, since
     * this method fails fast on a closed buffer.
     */
    public MemorySegment segment() {
        checkOpen();
        return segment;
    }

    @Override
    public String describe() {
        return "pinned host buffer of " + segment.byteSize() + " bytes";
    }

    @Override
    void release() {
        Driver.check(cuMemFreeHost(pointer), "cuMemFreeHost");
    }
}
