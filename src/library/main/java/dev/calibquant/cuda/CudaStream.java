package dev.calibquant.cuda;

import static dev.calibquant.cuda.bindings.CudaDriver.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/** A non-blocking CUDA stream: work on it runs in order, concurrently with other streams. */
public final class CudaStream extends NativeResource {
    private final MemorySegment handle;

    private CudaStream(CudaContext owner, MemorySegment handle) {
        super(owner);
        this.handle = handle;
    }

    static CudaStream create(CudaContext owner) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(C_POINTER);
            Driver.check(cuStreamCreate(out, CU_STREAM_NON_BLOCKING()), "cuStreamCreate");
            return new CudaStream(owner, out.get(C_POINTER, 0));
        }
    }

    MemorySegment handle() {
        checkOpen();
        return handle;
    }

    /** Waits until all work queued on this stream has finished; a failed kernel surfaces here. */
    public void synchronize() {
        checkOpen();
        InjectedFaults.before("cuStreamSynchronize");
        Driver.check(cuStreamSynchronize(handle), "cuStreamSynchronize");
    }

    /**
     * Waits for the work queued so far because {@code failure} stopped its caller midway: copies queued before it may
     * still read (or write) pinned host memory that the caller is about to reuse or free. A failure to wait (a sticky
     * CUDA error: the context runs nothing more) is added to {@code failure} as suppressed, never thrown instead.
     */
    public void synchronizeAfter(Throwable failure) {
        try {
            synchronize();
        } catch (RuntimeException e) {
            failure.addSuppressed(e);
        }
    }

    @Override
    public String describe() {
        return "CUDA stream";
    }

    @Override
    void release() {
        Driver.check(cuStreamDestroy_v2(handle), "cuStreamDestroy_v2");
    }
}
