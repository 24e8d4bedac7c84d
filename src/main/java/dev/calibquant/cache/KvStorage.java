package dev.calibquant.cache;

import java.lang.foreign.MemorySegment;

/**
 * Where a cache's bytes live. The {@link KvCacheManager} asks it for zero-filled blocks, moves bytes only through
 * {@link #write} and {@link #copy}, and frees every block it allocated before closing the storage; so a device
 * storage can stand behind the same manager API as {@link HostStorage}.
 *
 * <p>Implementations check every {@link RowCopy} against both sizes before moving a byte, and are safe to call
 * from several threads for different blocks at once.
 */
public interface KvStorage extends AutoCloseable {

    /** For messages: "host", "cuda:0", ... */
    String name();

    /**
     * A new zero-filled block of exactly {@code bytes} bytes, owned by the caller.
     *
     * @throws IllegalStateException when the storage is closed
     * @throws OutOfMemoryError when the memory behind it is exhausted (the cache manager's own byte limit is
     *     checked before it gets here)
     */
    StorageBlock allocate(long bytes, String label);

    /** Copies rows from host memory {@code source} into {@code target}. */
    void write(MemorySegment source, StorageBlock target, RowCopy copy);

    /** Copies rows from one block of this storage to another (distinct) one. */
    void copy(StorageBlock source, StorageBlock target, RowCopy copy);

    /** Bytes in blocks allocated and not yet closed. */
    long liveBytes();

    int liveBlocks();

    /**
     * Frees the storage. Blocks still open are freed too and reported: an {@link IllegalStateException} listing them
     * (the cache manager closes all its blocks first, so this means a bug). Idempotent.
     */
    @Override
    void close();
}
