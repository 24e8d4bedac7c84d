package dev.calibquant.cuda;

import static dev.calibquant.cuda.bindings.CudaDriver.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;

/**
 * A device's primary context and the root owner of everything made in it: device and pinned buffers, streams,
 * events, modules. Closing it frees whatever is still open and then reports those as leaks with a
 * {@link ResourceLeakException}. Thread-safe: any thread may use it; the context is made current on the calling
 * thread before each driver call.
 */
public final class CudaContext implements AutoCloseable {
    // Identity of the context object, not the handle: a re-retained primary context can come back with the same handle.
    private static final ThreadLocal<CudaContext> CURRENT = new ThreadLocal<>();

    private final CudaDevice device;
    private final MemorySegment handle;
    private final Set<NativeResource> live = new LinkedHashSet<>();
    /** Contexts whose memory this one reaches directly ({@link #enablePeerAccess}). */
    private final Set<CudaContext> peers = new LinkedHashSet<>();
    private boolean closed;
    private long liveDeviceBytes;
    private long livePinnedBytes;

    private CudaContext(CudaDevice device, MemorySegment handle) {
        this.device = device;
        this.handle = handle;
    }

    static CudaContext retainPrimary(CudaDevice device) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(C_POINTER);
            Driver.check(cuDevicePrimaryCtxRetain(out, device.handle()), "cuDevicePrimaryCtxRetain");
            CudaContext ctx = new CudaContext(device, out.get(C_POINTER, 0));
            ctx.bind();
            return ctx;
        }
    }

    public CudaDevice device() {
        return device;
    }

    /** Makes this context current on the calling thread (a no-op when it already is). */
    void bind() {
        synchronized (this) {
            if (closed) {
                throw new IllegalStateException("CUDA context of device " + device.handle() + " is closed");
            }
        }
        bindForRelease();
    }

    void bindForRelease() {
        if (CURRENT.get() != this) {
            Driver.check(cuCtxSetCurrent(handle), "cuCtxSetCurrent");
            CURRENT.set(this);
        }
    }

    private synchronized <T extends NativeResource> T track(T resource) {
        if (closed) {
            resource.closeByOwner();
            throw new IllegalStateException("CUDA context of device " + device.handle() + " is closed");
        }
        live.add(resource);
        if (resource instanceof DeviceBuffer b) {
            liveDeviceBytes += b.byteSize();
        } else if (resource instanceof PinnedHostBuffer p) {
            livePinnedBytes += p.byteSize();
        }
        return resource;
    }

    synchronized void forget(NativeResource resource) {
        if (live.remove(resource)) {
            if (resource instanceof DeviceBuffer b) {
                liveDeviceBytes -= b.byteSize();
            } else if (resource instanceof PinnedHostBuffer p) {
                livePinnedBytes -= p.byteSize();
            }
        }
    }

    /** Allocates {@code bytes} of device memory (contents undefined). */
    public DeviceBuffer allocate(long bytes) {
        if (bytes <= 0) {
            throw new IllegalArgumentException("device allocation of " + bytes + " bytes: size must be positive");
        }
        bind();
        return track(DeviceBuffer.allocate(this, bytes));
    }

    /** Allocates page-locked host memory, visible to Java as a {@link MemorySegment}, for fast and async copies. */
    public PinnedHostBuffer allocatePinned(long bytes) {
        if (bytes <= 0) {
            throw new IllegalArgumentException("pinned allocation of " + bytes + " bytes: size must be positive");
        }
        bind();
        return track(PinnedHostBuffer.allocate(this, bytes));
    }

    public CudaStream createStream() {
        bind();
        return track(CudaStream.create(this));
    }

    public CudaEvent createEvent() {
        bind();
        return track(CudaEvent.create(this));
    }

    /** JIT-compiles PTX text into a module; a failure carries the driver's JIT log. */
    public CudaModule loadPtx(String name, String ptx) {
        bind();
        return track(CudaModule.load(this, name, ptx));
    }

    /** Loads a cubin built for exactly this device's compute capability (no JIT: milliseconds, not a JIT pass). */
    public CudaModule loadCubin(String name, byte[] cubin) {
        if (cubin.length == 0) {
            throw new IllegalArgumentException("cubin " + name + " is empty");
        }
        bind();
        return track(CudaModule.loadCubin(this, name, cubin));
    }

    /**
     * Captures the work {@code work} queues on {@code stream} into a graph that replays it with one launch.
     * {@code work} must only queue work on {@code stream} (no synchronization, no allocation).
     */
    public CudaGraph captureGraph(CudaStream stream, Runnable work) {
        bind();
        return track(CudaGraph.capture(this, stream, work));
    }

    public void synchronize() {
        bind();
        Driver.check(cuCtxSynchronize(), "cuCtxSynchronize");
    }

    /**
     * Whether kernels and copies of this context can reach {@code peer}'s device memory directly once
     * {@link #enablePeerAccess} was called: always for the same device, otherwise as the driver says (NVLink or PCIe
     * peer-to-peer). Without it, {@link DeviceBuffer#copyFromPeer} still works, staged by the driver.
     */
    public boolean canAccessPeer(CudaContext peer) {
        if (peer.device.handle() == device.handle()) {
            return true;
        }
        bind();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(C_INT);
            Driver.check(cuDeviceCanAccessPeer(out, device.handle(), peer.device.handle()), "cuDeviceCanAccessPeer");
            return out.get(C_INT, 0) != 0;
        }
    }

    /**
     * Lets this context reach {@code peer}'s memory directly (one way; call it on both for both ways). Idempotent.
     * Returns false, changing nothing, where {@link #canAccessPeer} is false; nothing to do for the same device.
     */
    public boolean enablePeerAccess(CudaContext peer) {
        if (peer == this || peer.device.handle() == device.handle()) {
            return true;
        }
        peer.bind(); // a closed peer is refused here, before the driver sees its handle
        if (!canAccessPeer(peer)) {
            return false;
        }
        synchronized (this) {
            if (peers.contains(peer)) {
                return true;
            }
            bind();
            int result = cuCtxEnablePeerAccess(peer.handle, 0);
            if (result != CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED()) {
                Driver.check(result, "cuCtxEnablePeerAccess(device " + peer.device.handle() + ")");
            }
            peers.add(peer);
            return true;
        }
    }

    MemorySegment handle() {
        return handle;
    }

    /** Free and total device memory as the driver sees it now. */
    public long[] memoryInfo() {
        bind();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment free = arena.allocate(C_LONG_LONG);
            MemorySegment total = arena.allocate(C_LONG_LONG);
            Driver.check(cuMemGetInfo_v2(free, total), "cuMemGetInfo_v2");
            return new long[] {free.get(C_LONG_LONG, 0), total.get(C_LONG_LONG, 0)};
        }
    }

    public synchronized long liveDeviceBytes() {
        return liveDeviceBytes;
    }

    public synchronized long livePinnedBytes() {
        return livePinnedBytes;
    }

    public synchronized int liveResources() {
        return live.size();
    }

    /**
     * Frees every resource still open, releases the primary context, and throws {@link ResourceLeakException} if
     * there were any. Idempotent.
     */
    @Override
    public void close() {
        List<NativeResource> leftovers;
        synchronized (this) {
            if (closed) {
                return;
            }
            leftovers = new ArrayList<>(live);
            live.clear();
        }
        List<String> leaked = new ArrayList<>();
        RuntimeException failure = null;
        bindForRelease();
        for (NativeResource r : leftovers.reversed()) {
            leaked.add(r.describe());
            try {
                r.closeByOwner();
            } catch (RuntimeException e) {
                if (failure == null) {
                    failure = e;
                } else {
                    failure.addSuppressed(e);
                }
            }
        }
        synchronized (this) {
            closed = true;
            liveDeviceBytes = 0;
            livePinnedBytes = 0;
        }
        CURRENT.remove();
        int rc = cuDevicePrimaryCtxRelease_v2(device.handle());
        if (rc != Driver.CUDA_SUCCESS) {
            CudaException e = Driver.error(rc, "cuDevicePrimaryCtxRelease_v2");
            if (failure == null) {
                failure = e;
            } else {
                failure.addSuppressed(e);
            }
        }
        if (!leaked.isEmpty()) {
            ResourceLeakException leak = new ResourceLeakException("CUDA context of device " + device.handle(), leaked);
            if (failure != null) {
                leak.addSuppressed(failure);
            }
            throw leak;
        }
        if (failure != null) {
            throw failure;
        }
    }
}
