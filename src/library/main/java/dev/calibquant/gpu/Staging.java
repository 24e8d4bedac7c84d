package dev.calibquant.gpu;

import dev.calibquant.kernels.DecodePlan;

import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.cuda.PinnedHostBuffer;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Grow-only scratch buffers an owner reuses across calls (uploads, index tables, partial results), one per name;
 * all freed on close. A buffer handed out stays valid until the same name is asked for with a larger size.
 */
final class Staging implements AutoCloseable {
    private static final long MIN_BYTES = 4096;

    private final CudaContext context;
    private final Map<String, DeviceBuffer> device = new LinkedHashMap<>();
    private final Map<String, PinnedHostBuffer> pinned = new LinkedHashMap<>();

    Staging(CudaContext context) {
        this.context = context;
    }

    /** A device buffer of at least {@code bytes}; contents undefined. */
    DeviceBuffer device(String name, long bytes) {
        return device(name, bytes, false);
    }

    /**
     * The {@code mm_buf} of a decode step planned as {@code plan}: mode 3's rendezvous slots (zeroed when allocated;
     * every launch leaves them zero) or the min/max pairs of mode 1 (contents undefined).
     */
    DeviceBuffer minmax(DecodePlan plan, int kvHeads, int queryHeads) {
        long bytes = plan.minmaxBufferBytes(kvHeads, queryHeads);
        return plan.mmMode() == dev.calibquant.kernels.CalibQuantKernels.ONE_LAUNCH_MODE
                ? deviceZeroed("rendezvous", bytes) : device("min/max", bytes);
    }

    /** A device buffer of at least {@code bytes}, zero-filled whenever it is (re)allocated. */
    DeviceBuffer deviceZeroed(String name, long bytes) {
        return device(name, bytes, true);
    }

    private DeviceBuffer device(String name, long bytes, boolean zero) {
        DeviceBuffer b = device.get(name);
        if (b == null || b.byteSize() < bytes) {
            if (b != null) {
                device.remove(name).close();
            }
            b = context.allocate(Math.max(bytes, MIN_BYTES));
            device.put(name, b);
            if (zero) {
                b.fill((byte) 0);
            }
        }
        return b;
    }

    /** A pinned host buffer of at least {@code bytes}; contents undefined. */
    PinnedHostBuffer pinned(String name, long bytes) {
        PinnedHostBuffer b = pinned.get(name);
        if (b == null || b.byteSize() < bytes) {
            if (b != null) {
                pinned.remove(name).close();
            }
            b = context.allocatePinned(Math.max(bytes, MIN_BYTES));
            pinned.put(name, b);
        }
        return b;
    }

    @Override
    public void close() {
        RuntimeException failure = null;
        for (AutoCloseable c : new java.util.ArrayList<AutoCloseable>(device.values())) {
            failure = closeCollecting(c, failure);
        }
        for (AutoCloseable c : new java.util.ArrayList<AutoCloseable>(pinned.values())) {
            failure = closeCollecting(c, failure);
        }
        device.clear();
        pinned.clear();
        if (failure != null) {
            throw failure;
        }
    }

    private static RuntimeException closeCollecting(AutoCloseable c, RuntimeException failure) {
        try {
            c.close();
        } catch (Exception e) {
            RuntimeException r = e instanceof RuntimeException re ? re : new IllegalStateException(e);
            if (failure == null) {
                return r;
            }
            failure.addSuppressed(r);
        }
        return failure;
    }
}
