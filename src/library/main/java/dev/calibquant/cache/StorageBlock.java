package dev.calibquant.cache;

import java.lang.foreign.MemorySegment;

/**
 * One allocation of a {@link KvStorage}, with one owner (the cache structure holding it) that closes it;
 * {@link #close()} is idempotent.
 */
public interface StorageBlock extends AutoCloseable {

    /** What the block holds, for leak reports and errors (e.g. "layer 0 of sequence 3 full-precision keys"). */
    String label();

    long byteSize();

    /**
     * The block's memory. For host storage a readable segment; for device storage a segment carrying the device
     * address and size, not to be dereferenced on the host (the GPU package's device storage hands out segments whose
     * scope is closed, so any host access throws).
     *
     * @throws IllegalStateException naming the block once it is closed
     */
    MemorySegment segment();

    boolean isOpen();

    @Override
    void close();
}
