package dev.calibquant.cache;

import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantizedSpan;
import java.util.ArrayList;
import java.util.List;

/**
 * One layer of one sequence: the growing full-precision pair of blocks, keys and values each laid out
 * {@code [kvHeads][capacity][headDim]}, and one pair per quantized visual span, each half laid out
 * {@code [scale][offset][codes]} (keys in one block, values in the other). Owns its blocks; guarded by its
 * {@link Sequence}'s lock.
 *
 * <p>Why pairs: keys and values of one thing share their layout, so a storage that puts the two blocks of a pair at
 * one offset of two parallel regions lets the GPU kernels address both with that one offset (and a span's scales at
 * fixed distances from it); see {@link KvStorage#allocatePair}.
 */
final class LayerCache {

    /** A quantized span and the pair of blocks its segments are slices of. */
    record StoredSpan(QuantizedSpan span, BlockPair blocks) {
    }

    private final int kvHeads;
    private final int headDim;
    private final DType dtype;
    private BlockPair full;
    private int fullCapacity;
    private int fullTokens;
    private final List<StoredSpan> spans;

    LayerCache(int kvHeads, int headDim, DType dtype, BlockPair full, int fullCapacity, int fullTokens,
            List<StoredSpan> spans) {
        this.kvHeads = kvHeads;
        this.headDim = headDim;
        this.dtype = dtype;
        this.full = full;
        this.fullCapacity = fullCapacity;
        this.fullTokens = fullTokens;
        this.spans = List.copyOf(spans);
    }

    /** Bytes of one token of one head: a row of a full-precision block. */
    long rowBytes() {
        return (long) headDim * dtype.byteSize();
    }

    /** Bytes of one full-precision block (keys, or values) of {@code capacity} tokens. */
    static long fullHalfBytes(int kvHeads, int headDim, DType dtype, int capacity) {
        return (long) kvHeads * capacity * headDim * dtype.byteSize();
    }

    /** Bytes of the full-precision pair (keys and values) of {@code capacity} tokens. */
    static long fullBlockBytes(int kvHeads, int headDim, DType dtype, int capacity) {
        return 2 * fullHalfBytes(kvHeads, headDim, dtype, capacity);
    }

    BlockPair full() {
        return full;
    }

    List<StoredSpan> spans() {
        return spans;
    }

    int fullCapacity() {
        return fullCapacity;
    }

    int fullTokens() {
        return fullTokens;
    }

    int visualTokens() {
        int tokens = 0;
        for (StoredSpan s : spans) {
            tokens += s.span().tokens();
        }
        return tokens;
    }

    /** Installs a larger pair (already holding the current tokens) and returns the one it replaces. */
    BlockPair replaceFull(BlockPair larger, int capacity) {
        BlockPair old = full;
        full = larger;
        fullCapacity = capacity;
        return old;
    }

    void tokenAppended() {
        fullTokens++;
    }

    /** Forgets the full-precision rows from {@code tokens} on (the caller zeroed them). */
    void truncate(int tokens) {
        fullTokens = tokens;
    }

    LayerKvView snapshot() {
        List<QuantizedSpan> visual = new ArrayList<>(spans.size());
        for (StoredSpan s : spans) {
            visual.add(s.span());
        }
        return new LayerSnapshot(kvHeads, headDim, dtype, fullTokens, fullCapacity,
                full.keys().segment().asReadOnly(), full.values().segment().asReadOnly(), visual);
    }

    /** Frees every block; the first failure is thrown after all were tried, later ones suppressed. */
    void free() {
        List<StorageBlock> blocks = new ArrayList<>();
        blocks.add(full.keys());
        blocks.add(full.values());
        for (StoredSpan s : spans) {
            blocks.add(s.blocks().keys());
            blocks.add(s.blocks().values());
        }
        closeAll(blocks);
    }

    /** Closes every block; the first failure is thrown after all were tried, later ones suppressed. */
    static void closeAll(List<StorageBlock> blocks) {
        RuntimeException failure = null;
        for (StorageBlock b : blocks) {
            try {
                b.close();
            } catch (RuntimeException e) {
                if (failure == null) {
                    failure = e;
                } else {
                    failure.addSuppressed(e);
                }
            }
        }
        if (failure != null) {
            throw failure;
        }
    }
}
