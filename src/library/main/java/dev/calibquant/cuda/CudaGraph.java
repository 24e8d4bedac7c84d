package dev.calibquant.cuda;

import static dev.calibquant.cuda.bindings.CudaDriver.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * Work queued on a stream, captured once and replayed with one launch: removes the per-kernel launch cost of a
 * decode step. The captured kernel arguments are fixed, so a graph replays exactly the step it recorded.
 */
public final class CudaGraph extends NativeResource {
    private final MemorySegment exec;

    private CudaGraph(CudaContext owner, MemorySegment exec) {
        super(owner);
        this.exec = exec;
    }

    /** Captures what {@code work} queues on {@code stream}; {@code work} must not synchronize or allocate. */
    static CudaGraph capture(CudaContext owner, CudaStream stream, Runnable work) {
        MemorySegment s = stream.handle();
        try (Arena arena = Arena.ofConfined()) {
            Driver.check(cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL()), "cuStreamBeginCapture_v2");
            MemorySegment graphOut = arena.allocate(C_POINTER);
            RuntimeException failure = null;
            try {
                work.run();
            } catch (RuntimeException e) {
                failure = e;
            }
            int rc = cuStreamEndCapture(s, graphOut);
            if (failure != null) {
                if (rc == Driver.CUDA_SUCCESS) {
                    cuGraphDestroy(graphOut.get(C_POINTER, 0));
                }
                throw failure;
            }
            Driver.check(rc, "cuStreamEndCapture");
            MemorySegment graph = graphOut.get(C_POINTER, 0);
            try {
                MemorySegment execOut = arena.allocate(C_POINTER);
                Driver.check(cuGraphInstantiateWithFlags(execOut, graph, 0L), "cuGraphInstantiateWithFlags");
                return new CudaGraph(owner, execOut.get(C_POINTER, 0));
            } finally {
                Driver.check(cuGraphDestroy(graph), "cuGraphDestroy");
            }
        }
    }

    /** Replays the captured work on {@code stream}. */
    public void launch(CudaStream stream) {
        checkOpen();
        InjectedFaults.before("cuGraphLaunch");
        Driver.check(cuGraphLaunch(exec, stream.handle()), "cuGraphLaunch");
    }

    @Override
    public String describe() {
        return "CUDA graph";
    }

    @Override
    void release() {
        Driver.check(cuGraphExecDestroy(exec), "cuGraphExecDestroy");
    }
}
