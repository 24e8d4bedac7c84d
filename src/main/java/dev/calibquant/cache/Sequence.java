package dev.calibquant.cache;

import dev.calibquant.quant.ChannelQuantizer;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.KvSlice;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SegmentAllocator;
import java.util.ArrayList;
import java.util.List;

/**
 * One sequence's KV cache, every layer: created by {@link KvCacheManager#createSequence}, filled once per layer at
 * the end of prefill ({@link #fill}), then one token per layer per decode step ({@link #append}). Closing it frees
 * its memory.
 *
 * <p>Every method checks its input in full (shapes against the geometry, dtype, finiteness, the byte limit) before
 * it allocates or writes; a method that throws leaves the sequence and the cache as they were. Methods are
 * synchronized on the sequence, so one sequence is safe from several threads and different sequences run in
 * parallel. Use after {@link #close()} (or after the manager closed) throws {@link IllegalStateException} naming the
 * sequence; {@link #id()}, {@link #isOpen()} and {@link #usage()} stay readable.
 */
public final class Sequence implements AutoCloseable {

    private enum State { OPEN, CLOSED, FREED_BY_MANAGER }

    private final KvCacheManager manager;
    private final long id;
    private final int promptTokens;
    private final List<TokenSpan> visualSpans;
    private final int visualTokens;
    private final QuantConfig quantConfig;
    private final LayerCache[] layers;
    private MemoryUsage usage = MemoryUsage.ZERO;
    private State state = State.OPEN;

    Sequence(KvCacheManager manager, long id, int promptTokens, List<TokenSpan> visualSpans, QuantConfig quantConfig) {
        this.manager = manager;
        this.id = id;
        this.promptTokens = promptTokens;
        this.visualSpans = visualSpans;
        this.quantConfig = quantConfig;
        int visual = 0;
        for (TokenSpan s : visualSpans) {
            visual += s.length();
        }
        this.visualTokens = visual;
        this.layers = new LayerCache[manager.geometry().layers()];
    }

    public long id() {
        return id;
    }

    /** Tokens given to {@link #fill}: prefix, visual and text. */
    public int promptTokens() {
        return promptTokens;
    }

    /** The visual spans, sorted. */
    public List<TokenSpan> visualSpans() {
        return visualSpans;
    }

    /** How visual spans are quantized; null when the sequence has none. */
    public QuantConfig quantConfig() {
        return quantConfig;
    }

    public synchronized boolean isOpen() {
        return state == State.OPEN;
    }

    /** What this sequence holds now ({@link MemoryUsage#ZERO} once closed). */
    public synchronized MemoryUsage usage() {
        return usage;
    }

    public synchronized boolean isFilled(int layer) {
        checkOpen();
        checkLayerIndex(layer);
        return layers[layer] != null;
    }

    /** Tokens the layer holds: prompt plus appended. */
    public synchronized int tokens(int layer) {
        checkOpen();
        LayerCache cache = filledLayer(layer);
        return cache.fullTokens() + cache.visualTokens();
    }

    /**
     * The layer as decode attention reads it. The view is a snapshot: it stays valid until the next
     * {@link #append} to this layer (which may move the full-precision block) or until the sequence is closed;
     * reading host memory after that fails with {@link IllegalStateException} rather than reading freed memory.
     */
    public synchronized LayerKvView layer(int layer) {
        checkOpen();
        return filledLayer(layer).snapshot();
    }

    /**
     * Stores one layer's prefill keys and values, {@code [kvHeads][promptTokens][headDim]} of {@code dtype} (which
     * must be the cache's), little-endian: visual spans quantized, the other tokens in full precision.
     *
     * @throws InvalidShapeException when a size disagrees with the geometry and prompt length, or the dtype with
     *     the cache's
     * @throws dev.calibquant.quant.NonFiniteInputException naming the first NaN or infinity
     * @throws CacheMemoryLimitException when the layer would take the cache past its byte limit
     * @throws IllegalStateException when the layer is already filled or the sequence is closed
     */
    public synchronized void fill(int layer, MemorySegment keys, MemorySegment values, DType dtype) {
        checkOpen();
        checkLayerIndex(layer);
        String what = "layer " + layer + " of sequence " + id;
        if (layers[layer] != null) {
            throw new IllegalStateException(what + " is already filled");
        }
        ModelGeometry g = manager.geometry();
        int kvHeads = g.kvHeads();
        int headDim = g.headDim();
        checkDtype(what, dtype);
        long expected = (long) kvHeads * promptTokens * headDim * dtype.byteSize();
        String shape = "[" + kvHeads + "][" + promptTokens + "][" + headDim + "] " + dtype;
        checkSize(what + " keys", keys, expected, shape);
        checkSize(what + " values", values, expected, shape);
        FiniteCheck.requireFinite(what + " keys", keys, dtype, kvHeads, promptTokens, headDim, 0);
        FiniteCheck.requireFinite(what + " values", values, dtype, kvHeads, promptTokens, headDim, 0);

        int fullTokens = promptTokens - visualTokens;
        int capacity = CapacityPolicy.initial(fullTokens);
        long fullBytes = LayerCache.fullBlockBytes(kvHeads, headDim, dtype, capacity);
        long codeBytes = 0;
        long scaleBytes = 0;
        for (TokenSpan span : visualSpans) {
            long spanCodes = spanCodeBytes(span.length());
            codeBytes += spanCodes;
            scaleBytes += ChannelQuantizer.bytesFor(quantConfig, kvHeads, span.length(), headDim) - spanCodes;
        }
        MemoryUsage delta = new MemoryUsage(fullBytes, codeBytes, scaleBytes, fp16Bytes(promptTokens));
        manager.accountant().reserve(delta, "filling " + what);

        KvStorage storage = manager.storage();
        List<StorageBlock> allocated = new ArrayList<>();
        try {
            BlockPair full = storage.allocatePair(fullBytes / 2, fullBytes / 2, what + " full-precision");
            allocated.add(full.keys());
            allocated.add(full.values());
            copyFullPrecisionTokens(keys, values, full, capacity, dtype);
            List<LayerCache.StoredSpan> stored = new ArrayList<>();
            for (TokenSpan span : visualSpans) {
                stored.add(quantizeSpan(what, span, keys, values, dtype, allocated));
            }
            layers[layer] = new LayerCache(kvHeads, headDim, dtype, full, capacity, fullTokens, stored);
            usage = usage.plus(delta);
        } catch (RuntimeException | Error e) {
            for (StorageBlock b : allocated) {
                closeSuppressing(b, e);
            }
            manager.accountant().release(delta);
            throw e;
        }
    }

    /**
     * Appends one decode step's key and value to a filled layer, each {@code [kvHeads][headDim]} of the cache's
     * dtype. Grows the layer's full-precision block geometrically when it is full; near the byte limit, by one
     * token (the old and new block coexist while the rows are copied, so both count against the limit).
     *
     * @throws InvalidShapeException, dev.calibquant.quant.NonFiniteInputException, CacheMemoryLimitException,
     *     IllegalStateException as for {@link #fill}; nothing is appended then
     */
    public synchronized void append(int layer, MemorySegment key, MemorySegment value, DType dtype) {
        checkOpen();
        LayerCache cache = filledLayer(layer);
        String what = "layer " + layer + " of sequence " + id;
        ModelGeometry g = manager.geometry();
        checkDtype(what, dtype);
        long expected = (long) g.kvHeads() * g.headDim() * dtype.byteSize();
        String shape = "[" + g.kvHeads() + "][" + g.headDim() + "] " + dtype;
        checkSize(what + " appended key", key, expected, shape);
        checkSize(what + " appended value", value, expected, shape);
        int position = cache.fullTokens() + cache.visualTokens();
        FiniteCheck.requireFinite(what + " appended key", key, dtype, g.kvHeads(), 1, g.headDim(), position);
        FiniteCheck.requireFinite(what + " appended value", value, dtype, g.kvHeads(), 1, g.headDim(), position);

        if (cache.fullTokens() == cache.fullCapacity()) {
            grow(what, cache);
        }
        long rowBytes = cache.rowBytes();
        RowCopy row = new RowCopy(0, rowBytes, cache.fullTokens() * rowBytes, cache.fullCapacity() * rowBytes,
                rowBytes, g.kvHeads());
        KvStorage storage = manager.storage();
        storage.write(key, cache.full().keys(), row);
        storage.write(value, cache.full().values(), row);
        cache.tokenAppended();
        MemoryUsage delta = new MemoryUsage(0, 0, 0, fp16Bytes(1));
        manager.accountant().reserve(delta, "appending to " + what); // no bytes: cannot fail
        usage = usage.plus(delta);
    }

    /** Frees every layer; idempotent. */
    @Override
    public void close() {
        synchronized (this) {
            if (state != State.OPEN) {
                return;
            }
            state = State.CLOSED;
            freeAll();
        }
        manager.unregister(this);
    }

    /** Frees the sequence for its closing manager; returns what it held, or null when it was already closed. */
    synchronized MemoryUsage freeForManager() {
        if (state != State.OPEN) {
            return null;
        }
        MemoryUsage held = usage;
        state = State.FREED_BY_MANAGER;
        freeAll();
        return held;
    }

    private void freeAll() {
        RuntimeException failure = null;
        for (int i = 0; i < layers.length; i++) {
            if (layers[i] != null) {
                try {
                    layers[i].free();
                } catch (RuntimeException e) {
                    if (failure == null) {
                        failure = e;
                    } else {
                        failure.addSuppressed(e);
                    }
                }
                layers[i] = null;
            }
        }
        manager.accountant().release(usage);
        usage = MemoryUsage.ZERO;
        if (failure != null) {
            throw failure;
        }
    }

    private void copyFullPrecisionTokens(MemorySegment keys, MemorySegment values, BlockPair full, int capacity,
            DType dtype) {
        int kvHeads = manager.geometry().kvHeads();
        long rowBytes = (long) manager.geometry().headDim() * dtype.byteSize();
        long sourcePitch = promptTokens * rowBytes;
        long targetPitch = capacity * rowBytes;
        KvStorage storage = manager.storage();
        int target = 0;
        int cursor = 0;
        List<TokenSpan> gaps = new ArrayList<>();
        for (TokenSpan span : visualSpans) {
            if (span.start() > cursor) {
                gaps.add(new TokenSpan(cursor, span.start()));
            }
            cursor = span.end();
        }
        if (cursor < promptTokens) {
            gaps.add(new TokenSpan(cursor, promptTokens));
        }
        for (TokenSpan gap : gaps) {
            RowCopy rows = new RowCopy(gap.start() * rowBytes, sourcePitch, target * rowBytes, targetPitch,
                    gap.length() * rowBytes, kvHeads);
            storage.write(keys, full.keys(), rows);
            storage.write(values, full.values(), rows);
            target += gap.length();
        }
    }

    /**
     * Quantizes one span into host staging memory, rearranges it into a key part and a value part, each
     * {@code [scale][offset][codes]}, and writes those into a pair of blocks of the storage (for host storage two
     * extra copies of the span's output, 1/16 of its input at 1 bit; they keep device storage behind the same code,
     * laid out as the GPU kernels read it: see {@link LayerCache}).
     */
    private LayerCache.StoredSpan quantizeSpan(String what, TokenSpan span, MemorySegment keys, MemorySegment values,
            DType dtype, List<StorageBlock> allocated) {
        ModelGeometry g = manager.geometry();
        long bytes = ChannelQuantizer.bytesFor(quantConfig, g.kvHeads(), span.length(), g.headDim());
        try (Arena staging = Arena.ofConfined()) {
            MemorySegment stage = staging.allocate(bytes, HostStorage.ALIGNMENT);
            QuantizedSpan q = ChannelQuantizer.quantize(quantConfig,
                    KvSlice.ofTokens(keys, dtype, g.kvHeads(), promptTokens, g.headDim(), span.start(), span.end()),
                    KvSlice.ofTokens(values, dtype, g.kvHeads(), promptTokens, g.headDim(), span.start(), span.end()),
                    SegmentAllocator.slicingAllocator(stage));
            MemorySegment keyPart = concat(staging, q.keyScale(), q.keyOffset(), q.keyCodes());
            MemorySegment valuePart = concat(staging, q.valueScale(), q.valueOffset(), q.valueCodes());
            BlockPair pair = manager.storage().allocatePair(keyPart.byteSize(), valuePart.byteSize(),
                    what + " visual span " + span);
            allocated.add(pair.keys());
            allocated.add(pair.values());
            manager.storage().write(keyPart, pair.keys(), RowCopy.contiguous(0, 0, keyPart.byteSize()));
            manager.storage().write(valuePart, pair.values(), RowCopy.contiguous(0, 0, valuePart.byteSize()));
            MemorySegment k = pair.keys().segment();
            MemorySegment v = pair.values().segment();
            long ks = q.keyScale().byteSize();
            long vs = q.valueScale().byteSize();
            return new LayerCache.StoredSpan(new QuantizedSpan(q.tokens(), q.kvHeads(), q.headDim(), q.bits(),
                    q.keyGranularity(), q.valueGranularity(),
                    readOnly(k, 2 * ks, q.keyCodes().byteSize()), readOnly(v, 2 * vs, q.valueCodes().byteSize()),
                    readOnly(k, 0, ks), readOnly(k, ks, ks), readOnly(v, 0, vs), readOnly(v, vs, vs)), pair);
        }
    }

    /** The parts one after the other, in a new segment of {@code arena}. */
    private static MemorySegment concat(Arena arena, MemorySegment... parts) {
        long bytes = 0;
        for (MemorySegment p : parts) {
            bytes += p.byteSize();
        }
        MemorySegment out = arena.allocate(bytes, HostStorage.ALIGNMENT);
        long at = 0;
        for (MemorySegment p : parts) {
            MemorySegment.copy(p, 0, out, at, p.byteSize());
            at += p.byteSize();
        }
        return out;
    }

    private static MemorySegment readOnly(MemorySegment block, long offset, long bytes) {
        return block.asSlice(offset, bytes).asReadOnly();
    }

    private void grow(String what, LayerCache cache) {
        ModelGeometry g = manager.geometry();
        int capacity = cache.fullCapacity();
        int newCapacity = CapacityPolicy.next(capacity);
        MemoryUsage reserved = fullBlock(newCapacity);
        if (!manager.accountant().tryReserve(reserved)) {
            newCapacity = Math.addExact(capacity, 1);
            reserved = fullBlock(newCapacity);
            manager.accountant().reserve(reserved, "growing " + what + " to " + newCapacity + " tokens");
        }
        BlockPair larger;
        try {
            long half = reserved.fullPrecisionBytes() / 2;
            larger = manager.storage().allocatePair(half, half, what + " full-precision");
        } catch (RuntimeException | Error e) {
            manager.accountant().release(reserved);
            throw e;
        }
        try {
            long rowBytes = cache.rowBytes();
            RowCopy rows = new RowCopy(0, capacity * rowBytes, 0, newCapacity * rowBytes,
                    cache.fullTokens() * rowBytes, g.kvHeads());
            KvStorage storage = manager.storage();
            storage.copy(cache.full().keys(), larger.keys(), rows);
            storage.copy(cache.full().values(), larger.values(), rows);
        } catch (RuntimeException | Error e) {
            closeSuppressing(larger.keys(), e);
            closeSuppressing(larger.values(), e);
            manager.accountant().release(reserved);
            throw e;
        }
        BlockPair old = cache.replaceFull(larger, newCapacity);
        MemoryUsage freed = new MemoryUsage(old.byteSize(), 0, 0, 0);
        try {
            LayerCache.closeAll(List.of(old.keys(), old.values()));
        } finally { // the larger pair is installed: account for the swap even if freeing the old one failed
            manager.accountant().release(freed);
            usage = usage.plus(reserved).minus(freed);
        }
    }

    private MemoryUsage fullBlock(int capacity) {
        ModelGeometry g = manager.geometry();
        return new MemoryUsage(LayerCache.fullBlockBytes(g.kvHeads(), g.headDim(), manager.dtype(), capacity), 0, 0, 0);
    }

    private long spanCodeBytes(int tokens) {
        ModelGeometry g = manager.geometry();
        long keyParams = ChannelQuantizer.paramCount(quantConfig.keyGranularity(), g.kvHeads(), tokens, g.headDim());
        long valueParams = ChannelQuantizer.paramCount(quantConfig.valueGranularity(), g.kvHeads(), tokens,
                g.headDim());
        return ChannelQuantizer.bytesFor(quantConfig, g.kvHeads(), tokens, g.headDim())
                - Float.BYTES * 2L * (keyParams + valueParams);
    }

    private long fp16Bytes(int tokens) {
        ModelGeometry g = manager.geometry();
        return 2L * g.kvHeads() * tokens * g.headDim() * 2;
    }

    private void checkDtype(String what, DType dtype) {
        if (dtype != manager.dtype()) {
            throw new InvalidShapeException(what + ": data is " + dtype + " but the cache stores "
                    + manager.dtype());
        }
    }

    private static void checkSize(String what, MemorySegment data, long expected, String shape) {
        if (data.byteSize() != expected) {
            throw new InvalidShapeException(what + " are " + data.byteSize() + " bytes; " + shape + " is "
                    + expected + " bytes");
        }
    }

    private void checkLayerIndex(int layer) {
        if (layer < 0 || layer >= layers.length) {
            throw new IndexOutOfBoundsException("layer " + layer + " of sequence " + id + ": the model has "
                    + layers.length + " layers");
        }
    }

    private LayerCache filledLayer(int layer) {
        checkLayerIndex(layer);
        LayerCache cache = layers[layer];
        if (cache == null) {
            throw new IllegalStateException("layer " + layer + " of sequence " + id + " is not filled yet");
        }
        return cache;
    }

    private void checkOpen() {
        switch (state) {
            case OPEN -> {
            }
            case CLOSED -> throw new IllegalStateException("sequence " + id + " is closed");
            case FREED_BY_MANAGER -> throw new IllegalStateException("sequence " + id
                    + " was freed when its cache manager closed");
        }
    }

    private static void closeSuppressing(StorageBlock block, Throwable primary) {
        try {
            block.close();
        } catch (RuntimeException e) {
            primary.addSuppressed(e);
        }
    }

    @Override
    public String toString() {
        return "sequence " + id;
    }
}
