package dev.calibquant.cuda;

import static dev.calibquant.cuda.bindings.CudaDriver.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/** A timing event: record it on a stream, then read the GPU time between two events. */
public final class CudaEvent extends NativeResource {
    private final MemorySegment handle;

    private CudaEvent(CudaContext owner, MemorySegment handle) {
        super(owner);
        this.handle = handle;
    }

    static CudaEvent create(CudaContext owner) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(C_POINTER);
            Driver.check(cuEventCreate(out, CU_EVENT_DEFAULT()), "cuEventCreate");
            return new CudaEvent(owner, out.get(C_POINTER, 0));
        }
    }

    public void record(CudaStream stream) {
        checkOpen();
        Driver.check(cuEventRecord(handle, stream.handle()), "cuEventRecord");
    }

    public void synchronize() {
        checkOpen();
        Driver.check(cuEventSynchronize(handle), "cuEventSynchronize");
    }

    /** Milliseconds of GPU time from {@code start} to this event (both recorded and completed). */
    public float elapsedMillisSince(CudaEvent start) {
        checkOpen();
        start.checkOpen();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment ms = arena.allocate(C_FLOAT);
            Driver.check(cuEventElapsedTime_v2(ms, start.handle, handle), "cuEventElapsedTime_v2");
            return ms.get(C_FLOAT, 0);
        }
    }

    @Override
    public String describe() {
        return "CUDA event";
    }

    @Override
    void release() {
        Driver.check(cuEventDestroy_v2(handle), "cuEventDestroy_v2");
    }
}
