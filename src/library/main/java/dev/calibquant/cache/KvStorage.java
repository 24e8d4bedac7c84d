package dev.calibquant.cache;

import java.lang.foreign.MemorySegment;

/**
 * Where a cache's bytes live. The {@link KvCacheManager} asks it for zero-filled blocks, moves bytes only through
 * {@link #write} and {@link #copy}, and frees every block it allocated before closing the storage; so a device
 * storage can stand behind the same manager API as {@link HostStorage}.
 *
 * <p>Keys and values always come in a {@link #allocatePair pair} of blocks: a layer's full-precision keys and values
 * ({@code [kvHeads][capacity][headDim]} each), and a visual span's key part and value part
 * ({@code [scale][offset][codes]} each). A storage may place the two blocks of a pair so that one offset addresses
 * both (the GPU kernels read keys and values that way).
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

    /**
     * Two new zero-filled blocks, the keys' and the values' of one thing, owned by the caller (each closed on its
     * own). This default allocates them one after the other; a device storage places them at one offset of two
     * parallel memory regions.
     *
     * @throws IllegalStateException when the storage is closed
     * @throws OutOfMemoryError when the memory behind it is exhausted; nothing is left allocated then
     */
    default BlockPair allocatePair(long keyBytes, long valueBytes, String label) {
        StorageBlock keys = allocate(keyBytes, label + " keys");
        try {
            return new BlockPair(keys, allocate(valueBytes, label + " values"));
        } catch (RuntimeException | Error e) {
            try {
                keys.close();
            } catch (RuntimeException suppressed) {
                e.addSuppressed(suppressed);
            }
            throw e;
        }
    }

    /** Copies rows from host memory {@code source} into {@code target}. */
    void write(MemorySegment source, StorageBlock target, RowCopy copy);

    /**
     * Stores one layer's prefill into blocks of this storage that the manager allocated for it: the full-precision
     * rows and every visual span quantized (see {@link LayerPrefill}). The manager checked the input (shape, dtype,
     * finite) first. This default quantizes on the CPU and moves bytes with {@link #write}; a storage that can
     * quantize where its bytes live (the GPU) does that instead, with the same layout.
     */
    default void storePrefill(LayerPrefill prefill) {
        prefill.storeWithCpuQuantizer(this);
    }

    /**
     * Appends one decode step's key and value to each of several layers: {@code keys} and {@code values} hold
     * {@code [appends.size()][kvHeads][rowBytes]}, and item {@code i} goes to row {@code appends.get(i).row()} of every
     * head of its pair. This default writes them one by one; a device storage does it in one launch.
     */
    default void appendRows(MemorySegment keys, MemorySegment values, int kvHeads, long rowBytes,
            java.util.List<RowAppend> appends) {
        long itemBytes = kvHeads * rowBytes;
        for (int i = 0; i < appends.size(); i++) {
            RowAppend a = appends.get(i);
            RowCopy rows = new RowCopy(i * itemBytes, rowBytes, a.row() * rowBytes, a.capacity() * rowBytes, rowBytes,
                    kvHeads);
            write(keys, a.full().keys(), rows);
            write(values, a.full().values(), rows);
        }
    }

    /**
     * Whether {@link #copyFrom} can copy blocks of {@code other} (another storage) into this one without host memory in
     * between. False by default: the bytes then go through host memory ({@link Sequence#restoreLayer}).
     */
    default boolean canCopyFrom(KvStorage other) {
        return false;
    }

    /**
     * Copies all of {@code source}, a block of {@code other}, into {@code target}, a block of this storage of the same
     * size; complete (visible to this storage's later work) on return. Both storages are checked first: blocks that
     * are not theirs, closed, or of different sizes are refused with nothing copied.
     *
     * @throws UnsupportedOperationException where {@link #canCopyFrom} is false
     */
    default void copyFrom(KvStorage other, StorageBlock source, StorageBlock target) {
        throw new UnsupportedOperationException(name() + " cannot copy blocks of " + other.name() + " directly");
    }

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
