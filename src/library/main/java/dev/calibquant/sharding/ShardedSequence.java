package dev.calibquant.sharding;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.MemoryUsage;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * One sequence of a {@link ShardedKvCache}: one {@link Sequence} on one shard (the {@code BY_SEQUENCE} placements), or
 * one per shard, each holding a range of the KV heads ({@link Placement#BY_KV_HEAD}). Created by
 * {@link ShardedKvCache#createSequence}, filled once per layer ({@link #fill}), appended to, decoded, moved and closed
 * through the set; closing it frees every part.
 *
 * <p>Thread-safe as the set is: an operation holds the sequence's lock for its whole length, so one sequence is safe
 * from several threads and different sequences run in parallel. After a failure whose undo failed too (see
 * {@link ShardFailureException}) the sequence refuses every operation but {@link #close()}, saying why.
 */
public final class ShardedSequence implements AutoCloseable {
    private final ShardedKvCache cache;
    private final long id;
    private final long partFillBytes;
    // guarded by this
    private final Sequence[] parts;
    private final int[] shards;
    private boolean closed;
    private String broken;
    // read without the lock by the placement policy
    private volatile int home;
    private volatile int filledLayers;

    ShardedSequence(ShardedKvCache cache, long id, Sequence[] parts, int[] shards) {
        this.cache = cache;
        this.id = id;
        this.parts = parts;
        this.shards = shards;
        this.partFillBytes = parts[0].fillBytes();
        this.home = parts.length == 1 ? shards[0] : -1;
    }

    /** The set's number for this sequence: 1 for the first it created, and so on. */
    public long id() {
        return id;
    }

    /**
     * Names this sequence (and its parts) in every message about it, as {@link Sequence#label(String)} does. Returns
     * this sequence.
     *
     * @throws IllegalArgumentException when the label is blank, longer than 200 characters or holds a control
     *     character
     */
    public synchronized ShardedSequence label(String label) {
        for (Sequence p : parts) {
            p.label(label); // checks it; a move labels the new part the same
        }
        return this;
    }

    /** The label given by {@link #label(String)}, or null. */
    public String label() {
        return parts[0].label();
    }

    /** Tokens given to {@link #fill}: prefix, visual and text. */
    public int promptTokens() {
        return parts[0].promptTokens();
    }

    /** The visual spans, sorted. */
    public List<TokenSpan> visualSpans() {
        return parts[0].visualSpans();
    }

    /** How visual spans are quantized; null when the sequence has none. */
    public QuantConfig quantConfig() {
        return parts[0].quantConfig();
    }

    /** Generated tokens each layer holds room for from the end of prefill on. */
    public int reservedNewTokens() {
        return parts[0].reservedNewTokens();
    }

    /** Whether the sequence is open (not closed by itself or by its set). */
    public synchronized boolean isOpen() {
        return !closed;
    }

    /** The shards this sequence lives on, by index in {@link ShardedKvCache#shards()}: one, or all of them. */
    public synchronized List<Integer> shards() {
        List<Integer> on = new ArrayList<>(shards.length);
        for (int s : shards) {
            on.add(s);
        }
        return List.copyOf(on);
    }

    /** What the sequence holds, over all its parts ({@link MemoryUsage#ZERO} once closed). */
    public synchronized MemoryUsage usage() {
        MemoryUsage total = MemoryUsage.ZERO;
        for (Sequence p : parts) {
            total = total.plus(p.usage());
        }
        return total;
    }

    /** Whether {@code layer} is filled. */
    public synchronized boolean isFilled(int layer) {
        checkUsable();
        return parts[0].isFilled(layer);
    }

    /** Tokens {@code layer} holds (prompt and appended); every part holds as many. */
    public synchronized int tokens(int layer) {
        checkUsable();
        return parts[0].tokens(layer);
    }

    /**
     * Stores one layer's prefill, {@code [kvHeads][promptTokens][headDim]} of {@code dtype}: the
     * whole of it on the sequence's shard, or (BY_KV_HEAD) each shard's head range, a contiguous slice of the input
     * (no copy), on every shard at once when the shards' threads may read the input (not a confined arena's).
     * Checks shapes, dtype, finiteness and every shard's free bytes first.
     *
     * @throws dev.calibquant.quant.InvalidShapeException when a size or the dtype disagrees with the set
     * @throws dev.calibquant.quant.NonFiniteInputException naming the first NaN or infinity
     * @throws dev.calibquant.cache.CacheMemoryLimitException naming the shard without room for its part
     * @throws IllegalStateException when the layer is already filled or the sequence closed
     * @throws ShardFailureException when a shard failed storing its part (the others' were freed)
     */
    public void fill(int layer, MemorySegment keys, MemorySegment values, DType dtype) {
        cache.fill(this, layer, keys, values, dtype);
    }

    /**
     * Stores a layer taken from another cache into this sequence's unfilled {@code layer}, byte for byte (see
     * {@link Sequence#restoreLayer}): all KV heads of the model, as {@link #download} gives them, so a
     * sequence can move between sets of any placement, or between hosts once serialized. BY_KV_HEAD gives each shard
     * its head range, a slice of the view. The set checks the heads, head dim and dtype; each shard checks the rest
     * of its part.
     *
     * @throws dev.calibquant.quant.InvalidShapeException when the view disagrees with the set or, for its part, with
     *     a shard's sequence (nothing is stored anywhere)
     * @throws dev.calibquant.quant.NonFiniteInputException when a shard finds a NaN or infinity in its part
     * @throws IllegalStateException when the layer is already filled or the sequence closed
     * @throws ShardFailureException when a shard failed storing its part, or had no room for it (its exception is the
     *     cause; the other shards' parts were freed)
     */
    public void restoreLayer(int layer, LayerKvView from) {
        cache.restoreLayer(this, layer, from);
    }

    /**
     * Appends one step's key and value, each {@code [kvHeads][headDim]}: a batch of one for
     * {@link ShardedKvCache#append}.
     */
    public void append(int layer, MemorySegment key, MemorySegment value, DType dtype) {
        cache.append(layer, List.of(this), key, value, dtype);
    }

    /**
     * A host copy of {@code layer} in {@code arena}, all KV heads (the parts put back together, in head order): what
     * one unsharded cache would hold, byte for byte, and what {@link #restoreLayer} (here or in another set) and
     * {@link Sequence#restoreLayer} take.
     */
    public LayerKvView download(int layer, Arena arena) {
        return cache.download(this, layer, arena);
    }

    /** Frees every part; idempotent. */
    @Override
    public void close() {
        cache.close(this);
    }

    // --- for the set, which holds this sequence's lock ---

    ShardedKvCache cache() {
        return cache;
    }

    Sequence[] parts() {
        return parts;
    }

    int[] shardIndexes() {
        return shards;
    }

    /** Bytes a fill of every layer still unfilled will take on {@code shard} (placement counts them as taken). */
    long pendingBytes(int shard) {
        return home == shard ? (long) (cache.geometry().layers() - filledLayers) * partFillBytes : 0;
    }

    void layerFilled() {
        filledLayers++;
    }

    void layerCleared() {
        filledLayers--;
    }

    /** Now lives on {@code shard} as {@code part}. */
    void moved(Sequence part, int shard) {
        parts[0] = part;
        shards[0] = shard;
        home = shard;
    }

    /** Marks the sequence unusable after an undo failed. */
    void broken(String why) {
        broken = why;
    }

    /** Marks it closed; false when it already was. */
    boolean markClosed() {
        if (closed) {
            return false;
        }
        closed = true;
        return true;
    }

    void checkUsable() {
        if (closed) {
            throw new IllegalStateException(this + " is closed");
        }
        if (broken != null) {
            throw new IllegalStateException(this + " cannot be used: " + broken);
        }
    }

    @Override
    public String toString() {
        String l = label();
        return l != null ? "sharded sequence '" + l + "'"
                : "sharded sequence #" + id + " (" + promptTokens() + "-token prompt)";
    }
}
