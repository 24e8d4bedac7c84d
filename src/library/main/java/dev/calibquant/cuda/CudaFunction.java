package dev.calibquant.cuda;

import static dev.calibquant.cuda.bindings.CudaDriver.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * A kernel entry of a loaded module. Launch geometry is checked against the function's limits before the driver
 * sees it; argument lists come typed from {@link LaunchArgs} (built by the {@code kernels} package from the manifest).
 */
public final class CudaFunction {
    /** Dynamic shared memory a kernel may use without opting in. */
    public static final int DEFAULT_SHARED_LIMIT = 48 * 1024;

    private final CudaModule module;
    private final String entry;
    private final MemorySegment handle;
    private volatile int dynamicSharedOptIn = DEFAULT_SHARED_LIMIT;
    private final int maxThreads;

    CudaFunction(CudaModule module, String entry, MemorySegment handle) {
        this.module = module;
        this.entry = entry;
        this.handle = handle;
        // read once: a launch from Java should cost one driver call, not three
        this.maxThreads = Driver.readInt("cuFuncGetAttribute(" + entry + ")",
                p -> cuFuncGetAttribute(p, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK(), handle));
    }

    public String entry() {
        return entry;
    }

    public int attribute(int attribute) {
        module.checkOpen();
        return Driver.readInt("cuFuncGetAttribute(" + entry + ")", p -> cuFuncGetAttribute(p, attribute, handle));
    }

    public int registersPerThread() {
        return attribute(CU_FUNC_ATTRIBUTE_NUM_REGS());
    }

    public int maxThreadsPerBlock() {
        return maxThreads;
    }

    /** How many blocks of {@code threads} threads and {@code sharedBytes} of dynamic shared memory one SM holds at once. */
    public int maxActiveBlocksPerMultiprocessor(int threads, int sharedBytes) {
        if (threads <= 0 || threads > maxThreads || sharedBytes < 0) {
            throw new IllegalArgumentException(entry + ": occupancy of " + threads + " threads and " + sharedBytes
                    + " shared bytes per block");
        }
        module.checkOpen();
        return Driver.readInt("cuOccupancyMaxActiveBlocksPerMultiprocessor(" + entry + ")",
                p -> cuOccupancyMaxActiveBlocksPerMultiprocessor(p, handle, threads, sharedBytes));
    }

    /**
     * Launches on {@code stream}: grid {@code (gx, gy, gz)}, {@code threads} threads per block in x, {@code sharedBytes}
     * of dynamic shared memory. Asynchronous: errors inside the kernel surface at the next synchronization.
     */
    public void launch(int gx, int gy, int gz, int threads, int sharedBytes, CudaStream stream, LaunchArgs args) {
        if (gx <= 0 || gy <= 0 || gz <= 0) {
            throw new IllegalArgumentException(entry + ": grid (" + gx + ", " + gy + ", " + gz + ") must be positive");
        }
        if (gy > 65535 || gz > 65535) {
            throw new IllegalArgumentException(entry + ": grid y/z (" + gy + ", " + gz + ") exceed 65535");
        }
        if (threads <= 0 || threads > maxThreads) {
            throw new IllegalArgumentException(entry + ": " + threads + " threads per block; this kernel allows 1.."
                    + maxThreads);
        }
        if (sharedBytes < 0) {
            throw new IllegalArgumentException(entry + ": negative shared memory " + sharedBytes);
        }
        module.checkOpen();
        if (sharedBytes > dynamicSharedOptIn) {
            optInSharedMemory(sharedBytes);
        }
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment params = args.toKernelParams(arena);
            InjectedFaults.before("cuLaunchKernel");
            Driver.check(cuLaunchKernel(handle, gx, gy, gz, threads, 1, 1, sharedBytes, stream.handle(), params,
                    MemorySegment.NULL), "cuLaunchKernel(" + entry + ")");
        }
    }

    private synchronized void optInSharedMemory(int sharedBytes) {
        if (sharedBytes > dynamicSharedOptIn) {
            Driver.check(cuFuncSetAttribute(handle, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES(), sharedBytes),
                    "cuFuncSetAttribute(" + entry + ", MAX_DYNAMIC_SHARED_SIZE_BYTES=" + sharedBytes + ")");
            dynamicSharedOptIn = sharedBytes;
        }
    }
}
