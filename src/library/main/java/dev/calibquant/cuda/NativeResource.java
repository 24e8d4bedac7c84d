package dev.calibquant.cuda;

import java.util.concurrent.atomic.AtomicBoolean;

/**
 * A native handle with one owner. {@link #close()} is idempotent and thread-safe; any use after it fails fast with an
 * {@link IllegalStateException} naming the object instead of handing a dead handle to the driver.
 */
public abstract sealed class NativeResource implements AutoCloseable
        permits DeviceBuffer, PinnedHostBuffer, CudaStream, CudaEvent, CudaModule, CudaGraph {

    private final CudaContext owner;
    private final AtomicBoolean closed = new AtomicBoolean();

    NativeResource(CudaContext owner) {
        this.owner = owner;
    }

    CudaContext owner() {
        return owner;
    }

    public boolean isClosed() {
        return closed.get();
    }

    /** Throws if this resource or its context was closed; makes the context current on the calling thread. */
    final void checkOpen() {
        if (closed.get()) {
            throw new IllegalStateException(describe() + " is closed");
        }
        owner.bind();
    }

    /** One line naming the resource and its size, used in leak reports and errors. */
    public abstract String describe();

    /** Frees the native handle; called at most once. */
    abstract void release();

    @Override
    public final void close() {
        if (closed.compareAndSet(false, true)) {
            try {
                owner.bindForRelease();
                release();
            } finally {
                owner.forget(this);
            }
        }
    }

    /** Called by the owning context when it closes with this resource still open. */
    final void closeByOwner() {
        if (closed.compareAndSet(false, true)) {
            release();
        }
    }
}
