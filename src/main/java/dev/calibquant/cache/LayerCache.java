package dev.calibquant.cache;

import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantizedSpan;
import java.util.ArrayList;
import java.util.List;

/**
 * One layer of one sequence: the growing full-precision block, laid out {@code [K: kvHeads][capacity][headDim]}
 * followed by {@code [V: kvHeads][capacity][headDim]}, and one block per quantized visual span. Owns its blocks;
 * guarded by its {@link Sequence}'s lock.
 */
final class LayerCache {

    /** A quantized span and the block its segments are slices of. */
    record StoredSpan(QuantizedSpan span, StorageBlock block) {
    }

    private final int kvHeads;
    private final int headDim;
    private final DType dtype;
    private StorageBlock full;
    private int fullCapacity;
    private int fullTokens;
    private final List<StoredSpan> spans;

    LayerCache(int kvHeads, int headDim, DType dtype, StorageBlock full, int fullCapacity, int fullTokens,
            List<StoredSpan> spans) {
        this.kvHeads = kvHeads;
        this.headDim = headDim;
        this.dtype = dtype;
        this.full = full;
        this.fullCapacity = fullCapacity;
        this.fullTokens = fullTokens;
        this.spans = List.copyOf(spans);
    }

    /** Bytes of one token of one head: a row of the full-precision block. */
    long rowBytes() {
        return (long) headDim * dtype.byteSize();
    }

    /** Bytes of a full-precision block (keys and values) of {@code capacity} tokens. */
    static long fullBlockBytes(int kvHeads, int headDim, DType dtype, int capacity) {
        return 2L * kvHeads * capacity * headDim * dtype.byteSize();
    }

    /** Offset of the values half of a full block of {@code capacity} tokens. */
    long valuesOffset(int capacity) {
        return (long) kvHeads * capacity * rowBytes();
    }

    StorageBlock full() {
        return full;
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

    /** Installs a larger block (already holding the current tokens) and returns the one it replaces. */
    StorageBlock replaceFull(StorageBlock larger, int capacity) {
        StorageBlock old = full;
        full = larger;
        fullCapacity = capacity;
        return old;
    }

    void tokenAppended() {
        fullTokens++;
    }

    LayerKvView snapshot() {
        long half = valuesOffset(fullCapacity);
        List<QuantizedSpan> visual = new ArrayList<>(spans.size());
        for (StoredSpan s : spans) {
            visual.add(s.span());
        }
        return new LayerSnapshot(kvHeads, headDim, dtype, fullTokens, fullCapacity,
                full.segment().asSlice(0, half).asReadOnly(), full.segment().asSlice(half, half).asReadOnly(),
                visual);
    }

    /** Frees every block; the first failure is thrown after all were tried, later ones suppressed. */
    void free() {
        RuntimeException failure = null;
        List<StorageBlock> blocks = new ArrayList<>();
        blocks.add(full);
        for (StoredSpan s : spans) {
            blocks.add(s.block());
        }
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
