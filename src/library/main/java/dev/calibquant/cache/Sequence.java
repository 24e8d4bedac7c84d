package dev.calibquant.cache;

import dev.calibquant.quant.ChannelQuantizer;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

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

    /** A JVM-wide order in which {@link #copyLayerFrom} takes two sequences' locks (ids repeat across managers). */
    private static final java.util.concurrent.atomic.AtomicLong LOCK_ORDER = new java.util.concurrent.atomic.AtomicLong();

    private final KvCacheManager manager;
    private final long lockOrder = LOCK_ORDER.incrementAndGet();
    private final long id;
    private final int promptTokens;
    private final List<TokenSpan> visualSpans;
    private final int visualTokens;
    /** Per layer, how its visual spans are quantized; null when the sequence has none. */
    private final List<QuantConfig> layerConfigs;
    private final int reservedNewTokens;
    private final LayerCache[] layers;
    private MemoryUsage usage = MemoryUsage.ZERO;
    private State state = State.OPEN;
    private volatile String label;

    Sequence(KvCacheManager manager, long id, int promptTokens, List<TokenSpan> visualSpans,
            List<QuantConfig> layerConfigs,
            int reservedNewTokens) {
        this.reservedNewTokens = reservedNewTokens;
        this.manager = manager;
        this.id = id;
        this.promptTokens = promptTokens;
        this.visualSpans = visualSpans;
        this.layerConfigs = layerConfigs == null ? null : List.copyOf(layerConfigs);
        int visual = 0;
        for (TokenSpan s : visualSpans) {
            visual += s.length();
        }
        this.visualTokens = visual;
        this.layers = new LayerCache[manager.geometry().layers()];
    }

    /** The manager's number for this sequence: 1 for the first it created, 2 for the next, and so on. */
    public long id() {
        return id;
    }

    /**
     * Names this sequence in every message about it (a service's request id, say) instead of its manager's number:
     * "sequence 'req-7f3a'" rather than "sequence #12 (900-token prompt)". Returns this sequence.
     *
     * @throws IllegalArgumentException when {@code label} is blank, longer than 200 characters or holds a control
     *     character (it goes into one-line messages)
     */
    public Sequence label(String label) {
        Objects.requireNonNull(label, "label");
        if (label.isBlank() || label.length() > 200 || label.chars().anyMatch(Character::isISOControl)) {
            throw new IllegalArgumentException("a sequence label must be 1 to 200 printable characters, got \""
                    + label.replaceAll("\\p{Cntrl}", "?").substring(0, Math.min(label.length(), 40)) + "\"");
        }
        this.label = label;
        return this;
    }

    /** The label given by {@link #label(String)}, or null. */
    public String label() {
        return label;
    }

    /** Tokens given to {@link #fill}: prefix, visual and text. */
    public int promptTokens() {
        return promptTokens;
    }

    /** The visual spans, sorted. */
    public List<TokenSpan> visualSpans() {
        return visualSpans;
    }

    /** Generated tokens each layer holds room for from the end of prefill on (appends beyond it grow the layer). */
    public int reservedNewTokens() {
        return reservedNewTokens;
    }

    /**
     * How visual spans are quantized, in every layer alike; null when the sequence has none.
     *
     * @throws IllegalStateException when layers quantize differently ({@link #quantConfigs()} says how)
     */
    public QuantConfig quantConfig() {
        if (layerConfigs == null) {
            return null;
        }
        if (layerConfigs.stream().distinct().count() > 1) {
            throw new IllegalStateException(this + " quantizes its layers differently: see quantConfigs()");
        }
        return layerConfigs.getFirst();
    }

    /** How each layer's visual spans are quantized, one config per layer; null when the sequence has none. */
    public List<QuantConfig> quantConfigs() {
        return layerConfigs;
    }

    /** The config of {@code layer}'s visual spans (the sequence has some). */
    private QuantConfig config(int layer) {
        return layerConfigs.get(layer);
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
        String what = checkUnfilled(layer);
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
        store(layer, "filling " + what, prefillCapacity(), fullTokens, promptTokens, (full, targets) ->
                manager.storage().storePrefill(new LayerPrefill(keys, values, dtype, kvHeads, promptTokens, headDim,
                        full, prefillCapacity(), gaps(), layerConfigs == null ? null : config(layer), targets)));
    }

    /**
     * Stores a layer taken from another cache into this unfilled layer, byte for byte: the full-precision rows and
     * every quantized span's codes, scales and offsets as they are (nothing is quantized again), with the view's
     * capacity. How a sequence moves to another cache: read the layer there ({@link #layer}, or a device cache's
     * download), restore it here, close the original.
     *
     * <p>The view must be in host memory and fit this sequence: the cache's KV heads, head dim and dtype; at least
     * the prompt's full-precision tokens (more when tokens were appended), its block exactly {@code fullCapacity}
     * rows; one span per visual span of this sequence, in order, of that span's length, with the quantization
     * config's bits and granularities, every segment of the size that implies. Its rows, scales and offsets must be
     * finite. Everything is checked before anything is allocated.
     *
     * @throws InvalidShapeException when a size, a count or the dtype disagrees
     * @throws dev.calibquant.quant.NonFiniteInputException naming the first NaN or infinity
     * @throws IllegalArgumentException when a segment is not readable host memory here (a device block: download it)
     * @throws CacheMemoryLimitException when the layer would take the cache past its byte limit
     * @throws IllegalStateException when the layer is already filled or the sequence is closed
     */
    public synchronized void restoreLayer(int layer, LayerKvView from) {
        Objects.requireNonNull(from, "from");
        String what = checkUnfilled(layer);
        ModelGeometry g = manager.geometry();
        int kvHeads = g.kvHeads();
        int headDim = g.headDim();
        String source = what + ", restored from a view";
        if (from.kvHeads() != kvHeads || from.headDim() != headDim) {
            throw new InvalidShapeException(source + " of " + from.kvHeads() + " KV heads of dim " + from.headDim()
                    + ": the cache has " + kvHeads + " of dim " + headDim);
        }
        checkDtype(source, from.dtype());
        int fullTokens = from.fullTokens();
        int capacity = from.fullCapacity();
        int promptFull = promptTokens - visualTokens;
        if (fullTokens < promptFull || capacity < fullTokens || capacity <= 0) {
            throw new InvalidShapeException(source + ": " + fullTokens + " full-precision tokens in a capacity of "
                    + capacity + "; the prompt alone has " + promptFull + " (and the capacity must hold them all)");
        }
        long half = LayerCache.fullHalfBytes(kvHeads, headDim, manager.dtype(), capacity);
        String shape = "[" + kvHeads + "][" + capacity + "][" + headDim + "] " + manager.dtype();
        checkSize(source + " full-precision keys", readable(source, from.fullKeys()), half, shape);
        checkSize(source + " full-precision values", readable(source, from.fullValues()), half, shape);
        List<QuantizedSpan> spans = from.visualSpans();
        if (spans.size() != visualSpans.size()) {
            throw new InvalidShapeException(source + ": " + spans.size() + " quantized spans; the sequence has "
                    + visualSpans.size() + " visual spans " + visualSpans);
        }
        for (int i = 0; i < spans.size(); i++) {
            checkRestoredSpan(source + ", visual span " + visualSpans.get(i), spans.get(i), visualSpans.get(i),
                    config(layer));
        }
        FiniteCheck.requireFinite(source + " full-precision keys", from.fullKeys(), manager.dtype(), kvHeads, fullTokens,
                capacity, headDim, 0);
        FiniteCheck.requireFinite(source + " full-precision values", from.fullValues(), manager.dtype(), kvHeads, fullTokens,
                capacity, headDim, 0);
        long rowBytes = (long) headDim * manager.dtype().byteSize();
        store(layer, "restoring " + what, capacity, fullTokens, fullTokens + visualTokens, (full, targets) -> {
            KvStorage storage = manager.storage();
            RowCopy rows = new RowCopy(0, capacity * rowBytes, 0, capacity * rowBytes, fullTokens * rowBytes,
                    kvHeads);
            storage.write(from.fullKeys(), full.keys(), rows);
            storage.write(from.fullValues(), full.values(), rows);
            for (int i = 0; i < spans.size(); i++) {
                QuantizedSpan q = spans.get(i);
                BlockPair pair = targets.get(i).blocks();
                if (q.wideKeys() == null) {
                    writeParts(storage, pair.keys(), q.keyScale(), q.keyOffset(), q.keyCodes());
                } else {
                    writeParts(storage, pair.keys(), q.keyScale(), q.keyOffset(), q.keyCodes(), q.wideKeys().mask(),
                            q.wideKeys().lowBits());
                }
                writeParts(storage, pair.values(), q.valueScale(), q.valueOffset(), q.valueCodes());
            }
        });
    }

    /**
     * Stores layer {@code layer} as a bit-for-bit copy of the same layer of {@code source}, a sequence of another
     * cache manager, storage to storage without host memory in between (device to device between GPUs, say): the
     * way {@link #restoreLayer} stores a downloaded layer, without the download. {@code source} must have this
     * sequence's geometry, dtype, prompt, visual spans and quantization config, and this storage must be able to copy
     * from its storage ({@link KvStorage#canCopyFrom}). Everything is checked before anything is allocated; on any
     * failure this sequence is as it was. Both sequences are locked meanwhile (in one JVM-wide order).
     *
     * @throws IllegalArgumentException when the two sequences differ in any of the above, or are one
     * @throws UnsupportedOperationException when this storage cannot copy from the source's
     * @throws CacheMemoryLimitException when the layer would take this cache past its byte limit
     * @throws IllegalStateException when the layer is already filled here or not filled in {@code source}, or either
     *     sequence is closed
     */
    public void copyLayerFrom(int layer, Sequence source) {
        Objects.requireNonNull(source, "source");
        if (source == this) {
            throw new IllegalArgumentException("copying layer " + layer + " of " + this + " onto itself");
        }
        Object first = lockOrder < source.lockOrder ? this : source;
        Object second = first == this ? source : this;
        synchronized (first) {
            synchronized (second) {
                copyLayerLocked(layer, source);
            }
        }
    }

    private void copyLayerLocked(int layer, Sequence source) {
        String what = checkUnfilled(layer);
        source.checkOpen();
        String from = "layer " + layer + " of " + source;
        LayerCache src = layer < source.layers.length ? source.layers[layer] : null;
        if (src == null) {
            throw new IllegalStateException("copying " + from + " into " + what + ": it is not filled");
        }
        KvCacheManager other = source.manager;
        if (!other.geometry().equals(manager.geometry()) || other.dtype() != manager.dtype()
                || source.promptTokens != promptTokens || !source.visualSpans.equals(visualSpans)
                || !Objects.equals(source.layerConfigs, layerConfigs)) {
            throw new IllegalArgumentException("copying " + from + " into " + what + ": the two differ in geometry ("
                    + other.geometry() + " / " + manager.geometry() + "), dtype, prompt, visual spans or quantization");
        }
        KvStorage storage = manager.storage();
        KvStorage sourceStorage = other.storage();
        if (!storage.canCopyFrom(sourceStorage)) {
            throw new UnsupportedOperationException("copying " + from + " into " + what + ": " + storage.name()
                    + " cannot copy blocks of " + sourceStorage.name() + " directly (download and restore the layer)");
        }
        List<LayerCache.StoredSpan> sourceSpans = src.spans();
        store(layer, "copying " + from + " into " + what, src.fullCapacity(), src.fullTokens(),
                src.fullTokens() + visualTokens, (full, targets) -> {
                    storage.copyFrom(sourceStorage, src.full().keys(), full.keys());
                    storage.copyFrom(sourceStorage, src.full().values(), full.values());
                    for (int i = 0; i < targets.size(); i++) {
                        BlockPair pair = targets.get(i).blocks();
                        storage.copyFrom(sourceStorage, sourceSpans.get(i).blocks().keys(), pair.keys());
                        storage.copyFrom(sourceStorage, sourceSpans.get(i).blocks().values(), pair.values());
                    }
                });
    }

    /** A restored span against this sequence's span {@code span}: its length, config and segment sizes; finite. */
    private void checkRestoredSpan(String what, QuantizedSpan q, TokenSpan span, QuantConfig quantConfig) {
        ModelGeometry g = manager.geometry();
        if (q.tokens() != span.length() || q.kvHeads() != g.kvHeads() || q.headDim() != g.headDim()) {
            throw new InvalidShapeException(what + ": the view's span is [" + q.kvHeads() + "][" + q.tokens() + "]["
                    + q.headDim() + "]; the sequence's is [" + g.kvHeads() + "][" + span.length() + "]["
                    + g.headDim() + "]");
        }
        int wide = q.wideKeys() == null ? 0 : q.wideKeys().channels();
        if (q.bits() != quantConfig.bits() || q.valueBits() != quantConfig.valueBits()
                || q.keyGranularity() != quantConfig.keyGranularity()
                || q.valueGranularity() != quantConfig.valueGranularity() || q.paramType() != quantConfig.paramType()
                || wide != quantConfig.wideKeyChannels()) {
            throw new InvalidShapeException(what + ": the view's span is " + format(q.bits(), q.valueBits(),
                    q.keyGranularity(), q.valueGranularity(), q.paramType(), wide) + "; the sequence quantizes "
                    + format(quantConfig.bits(), quantConfig.valueBits(), quantConfig.keyGranularity(),
                            quantConfig.valueGranularity(), quantConfig.paramType(), quantConfig.wideKeyChannels()));
        }
        LayerPrefill.SpanPart k = LayerPrefill.spanPart(quantConfig, true, g.kvHeads(), span.length(), g.headDim());
        LayerPrefill.SpanPart v = LayerPrefill.spanPart(quantConfig, false, g.kvHeads(), span.length(), g.headDim());
        checkSize(what + " key codes", readable(what, q.keyCodes()), k.codeBytes(), "its codes");
        checkSize(what + " value codes", readable(what, q.valueCodes()), v.codeBytes(), "its codes");
        if (wide > 0) {
            checkSize(what + " wide-channel mask", readable(what, q.wideKeys().mask()), k.maskBytes(), "its mask");
            checkSize(what + " wide-channel low bits", readable(what, q.wideKeys().lowBits()), k.lowBitBytes(),
                    "its low bits");
            for (int h = 0; h < g.kvHeads(); h++) {
                try {
                    q.wideKeys().channelsOf(h, g.headDim());
                } catch (InvalidShapeException e) {
                    throw new InvalidShapeException(what + ": " + e.getMessage());
                }
            }
        }
        String params = "its " + (q.paramType() == dev.calibquant.quant.DType.FP16 ? "fp16" : "fp32") + " scales";
        checkParams(what + " key scales", readable(what, q.keyScale()), k.scaleBytes(), params, q.paramType());
        checkParams(what + " key offsets", readable(what, q.keyOffset()), k.scaleBytes(), params, q.paramType());
        checkParams(what + " value scales", readable(what, q.valueScale()), v.scaleBytes(), params, q.paramType());
        checkParams(what + " value offsets", readable(what, q.valueOffset()), v.scaleBytes(), params, q.paramType());
    }

    /** "1-bit PER_CHANNEL/PER_CHANNEL", with ", fp16 parameters" and ", 32 wide key channels" where they apply. */
    private static String format(int keyBits, int valueBits, dev.calibquant.quant.Granularity kg,
            dev.calibquant.quant.Granularity vg, dev.calibquant.quant.DType params, int wide) {
        return widths(keyBits, valueBits) + " " + kg + "/" + vg
                + (params == dev.calibquant.quant.DType.FP16 ? ", fp16 parameters" : "")
                + (wide > 0 ? ", " + wide + " wide key channels" : "");
    }

    /** "2-bit", or "2-bit keys, 1-bit values". */
    private static String widths(int keyBits, int valueBits) {
        return keyBits == valueBits ? keyBits + "-bit" : keyBits + "-bit keys, " + valueBits + "-bit values";
    }

    /** Sizes, then every fp32 finite (the exception names the element's index as its channel). */
    private static void checkParams(String what, MemorySegment params, long bytes, String shape,
            dev.calibquant.quant.DType type) {
        checkSize(what, params, bytes, shape);
        for (long i = 0; i < bytes / type.byteSize(); i++) {
            float x = Elements.read(params, type, i);
            if (!Float.isFinite(x)) {
                throw new dev.calibquant.quant.NonFiniteInputException(what, -1, -1, (int) i, x);
            }
        }
    }

    /** {@code segment}, after checking that this thread can read it (a device block's segment cannot be). */
    private static MemorySegment readable(String what, MemorySegment segment) {
        Objects.requireNonNull(segment, what);
        if (!segment.scope().isAlive() || !segment.isAccessibleBy(Thread.currentThread())) {
            throw new IllegalArgumentException(what + ": a segment of the view is not readable host memory on this "
                    + "thread (a device block? download the layer first)");
        }
        return segment;
    }

    /** Writes {@code parts} one after the other into {@code block}, from its first byte. */
    private static void writeParts(KvStorage storage, StorageBlock block, MemorySegment... parts) {
        long at = 0;
        for (MemorySegment p : parts) {
            storage.write(p, block, RowCopy.contiguous(0, at, p.byteSize()));
            at += p.byteSize();
        }
    }

    /** Writes a new layer's blocks, given the full-precision pair and one target per visual span. */
    private interface LayerWriter {
        void write(BlockPair full, List<LayerPrefill.SpanTarget> spans);
    }

    /**
     * Reserves the bytes of a layer of {@code capacity} full-precision rows (plus the visual spans), allocates its
     * blocks, has {@code writer} fill them and installs the layer; on any failure frees what it allocated and
     * releases the reservation, so the sequence is as it was.
     */
    private void store(int layer, String action, int capacity, int fullTokens, int tokens, LayerWriter writer) {
        ModelGeometry g = manager.geometry();
        int kvHeads = g.kvHeads();
        int headDim = g.headDim();
        String what = "layer " + layer + " of " + this;
        MemoryUsage delta = layerUsage(layer, capacity, tokens);
        manager.accountant().reserve(delta, action);
        KvStorage storage = manager.storage();
        List<StorageBlock> allocated = new ArrayList<>();
        try {
            long fullBytes = delta.fullPrecisionBytes();
            BlockPair full = storage.allocatePair(fullBytes / 2, fullBytes / 2, what + " full-precision");
            allocated.add(full.keys());
            allocated.add(full.values());
            List<LayerPrefill.SpanTarget> targets = new ArrayList<>();
            for (TokenSpan span : visualSpans) {
                LayerPrefill.SpanPart k = LayerPrefill.spanPart(config(layer), true, kvHeads, span.length(), headDim);
                LayerPrefill.SpanPart v = LayerPrefill.spanPart(config(layer), false, kvHeads, span.length(), headDim);
                BlockPair pair = storage.allocatePair(k.bytes(), v.bytes(), what + " visual span " + span);
                allocated.add(pair.keys());
                allocated.add(pair.values());
                targets.add(new LayerPrefill.SpanTarget(span, pair));
            }
            writer.write(full, targets);
            List<LayerCache.StoredSpan> stored = new ArrayList<>();
            for (LayerPrefill.SpanTarget t : targets) {
                stored.add(spanView(config(layer), t));
            }
            layers[layer] = new LayerCache(kvHeads, headDim, manager.dtype(), full, capacity, fullTokens, stored);
            usage = usage.plus(delta);
        } catch (RuntimeException | Error e) {
            for (StorageBlock b : allocated) {
                closeSuppressing(b, e);
            }
            manager.accountant().release(delta);
            throw e;
        }
    }

    /** What a layer of {@code capacity} full-precision rows and this sequence's spans holds, for {@code tokens}. */
    private MemoryUsage layerUsage(int layer, int capacity, int tokens) {
        ModelGeometry g = manager.geometry();
        long fullBytes = LayerCache.fullBlockBytes(g.kvHeads(), g.headDim(), manager.dtype(), capacity);
        long codeBytes = 0;
        long scaleBytes = 0;
        for (TokenSpan span : visualSpans) {
            long spanCodes = spanCodeBytes(config(layer), span.length());
            codeBytes += spanCodes;
            scaleBytes += ChannelQuantizer.bytesFor(config(layer), g.kvHeads(), span.length(), g.headDim())
                    - spanCodes;
        }
        return new MemoryUsage(fullBytes, codeBytes, scaleBytes, fp16Bytes(tokens));
    }

    /** Full-precision rows a layer holds at the end of prefill. */
    private int prefillCapacity() {
        int fullTokens = promptTokens - visualTokens;
        // a reservation is exact (the service said how many tokens it generates); otherwise room for one step
        return reservedNewTokens > 0 ? Math.addExact(fullTokens, reservedNewTokens) : CapacityPolicy.initial(fullTokens);
    }

    /**
     * Bytes {@link #fill} allocates for one layer, the largest of any layer (layers may quantize differently): the
     * full-precision block with its room for generated tokens, and the quantized spans. What a placement policy or an
     * admission check weighs against a cache's free bytes.
     */
    public long fillBytes() {
        long most = 0;
        for (int layer = 0; layer < layers.length; layer++) {
            most = Math.max(most, fillBytes(layer));
        }
        return most;
    }

    /** Bytes {@link #fill} allocates for {@code layer}. */
    public long fillBytes(int layer) {
        checkLayerIndex(layer);
        return layerUsage(layer, prefillCapacity(), promptTokens).totalBytes();
    }

    /**
     * Frees one filled layer, which can then be filled or restored again: how a caller undoes a layer it wrote as
     * part of a larger operation that failed elsewhere (a sharded cache's fill on another device).
     *
     * @throws IllegalStateException when the layer is not filled or the sequence is closed
     */
    public synchronized void clearLayer(int layer) {
        checkOpen();
        LayerCache cache = filledLayer(layer);
        MemoryUsage held = layerUsage(layer, cache.fullCapacity(), cache.fullTokens() + cache.visualTokens());
        layers[layer] = null;
        try {
            cache.free();
        } finally { // the layer is gone either way: its bytes are no longer this sequence's
            manager.accountant().release(held);
            usage = usage.minus(held);
        }
    }

    /**
     * Drops the tokens appended to {@code layer} after its first {@code tokens} (counted as {@link #tokens} counts
     * them): a speculative step rolled back, or an append undone because another part of a batch failed. Their rows
     * are zeroed, as a fresh block's are; the block keeps its capacity. Prompt tokens cannot be dropped.
     *
     * @throws IllegalArgumentException when {@code tokens} is below the prompt's length or above the layer's tokens
     * @throws IllegalStateException when the layer is not filled or the sequence is closed
     */
    public synchronized void truncate(int layer, int tokens) {
        checkOpen();
        LayerCache cache = filledLayer(layer);
        int held = cache.fullTokens() + cache.visualTokens();
        if (tokens < promptTokens || tokens > held) {
            throw new IllegalArgumentException("cannot truncate layer " + layer + " of " + this + " to " + tokens
                    + " tokens: it holds " + held + ", of which " + promptTokens + " are the prompt's");
        }
        int dropped = held - tokens;
        if (dropped == 0) {
            return;
        }
        int keep = cache.fullTokens() - dropped;
        long rowBytes = cache.rowBytes();
        RowCopy rows = new RowCopy(0, 0, keep * rowBytes, cache.fullCapacity() * rowBytes, dropped * rowBytes,
                manager.geometry().kvHeads());
        try (java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofConfined()) {
            MemorySegment zeros = arena.allocate(dropped * rowBytes);
            manager.storage().write(zeros, cache.full().keys(), rows);
            manager.storage().write(zeros, cache.full().values(), rows);
        }
        cache.truncate(keep);
        MemoryUsage freed = new MemoryUsage(0, 0, 0, fp16Bytes(dropped));
        manager.accountant().release(freed);
        usage = usage.minus(freed);
    }

    /**
     * Appends one decode step's key and value to a filled layer, each {@code [kvHeads][headDim]} of the cache's
     * dtype. Grows the layer's full-precision block geometrically when it is full; near the byte limit, by one
     * token (the old and new block coexist while the rows are copied, so both count against the limit).
     *
     * @throws InvalidShapeException when a size or the dtype disagrees with the cache
     * @throws dev.calibquant.quant.NonFiniteInputException naming the first NaN or infinity
     * @throws CacheMemoryLimitException when growing a full layer would pass the byte limit
     * @throws IllegalStateException when the layer is not filled or the sequence is closed; nothing is appended
     *     after any refusal
     */
    public void append(int layer, MemorySegment key, MemorySegment value, DType dtype) {
        appendAll(manager, layer, List.of(this), key, value, dtype);
    }

    /**
     * {@link KvCacheManager#append}: holds every sequence's lock (in id order) while it checks all of them, grows the
     * full layers, and appends through one {@link KvStorage#appendRows}.
     */
    static void appendAll(KvCacheManager manager, int layer, List<Sequence> batch, MemorySegment keys,
            MemorySegment values, DType dtype) {
        Objects.requireNonNull(batch, "batch");
        Objects.requireNonNull(keys, "keys");
        Objects.requireNonNull(values, "values");
        Objects.requireNonNull(dtype, "dtype");
        if (batch.isEmpty()) {
            throw new IllegalArgumentException("append to an empty batch");
        }
        for (Sequence s : batch) {
            if (Objects.requireNonNull(s, "sequence").manager != manager) {
                throw new IllegalArgumentException(s + " belongs to another cache manager");
            }
        }
        holdingLocks(batch, () -> {
            appendLocked(manager, layer, batch, keys, values, dtype);
            return null;
        });
    }

    /**
     * Runs {@code action} holding the lock of every sequence of {@code batch}, taken in id order: the order every
     * batch operation (a batch append, a GPU decode step) takes them, so that two of them never deadlock. A sequence's
     * own methods lock it and then its storage, never another sequence.
     *
     * @throws IllegalArgumentException when the batch names a sequence twice
     */
    public static <T> T holdingLocks(List<Sequence> batch, java.util.function.Supplier<T> action) {
        java.util.IdentityHashMap<Sequence, Boolean> seen = new java.util.IdentityHashMap<>();
        for (Sequence s : batch) {
            if (seen.put(Objects.requireNonNull(s, "sequence"), Boolean.TRUE) != null) {
                throw new IllegalArgumentException(s + " appears twice in the batch");
            }
        }
        List<Sequence> order = new ArrayList<>(batch);
        // ids are unique within a manager; the identity hash orders sequences of different managers
        order.sort(java.util.Comparator.comparingLong(Sequence::id).thenComparingInt(System::identityHashCode));
        return locked(order, 0, action);
    }

    private static <T> T locked(List<Sequence> order, int i, java.util.function.Supplier<T> action) {
        if (i == order.size()) {
            return action.get();
        }
        synchronized (order.get(i)) {
            return locked(order, i + 1, action);
        }
    }

    /** {@link #appendAll} once every lock is held. */
    private static void appendLocked(KvCacheManager manager, int layer, List<Sequence> batch, MemorySegment keys,
            MemorySegment values, DType dtype) {
        ModelGeometry g = manager.geometry();
        int n = batch.size();
        long itemBytes = (long) g.kvHeads() * g.headDim() * dtype.byteSize();
        String shape = n == 1 ? "[" + g.kvHeads() + "][" + g.headDim() + "] " + dtype
                : "[" + n + "][" + g.kvHeads() + "][" + g.headDim() + "] " + dtype;
        String what0 = n == 1 ? "layer " + layer + " of " + batch.getFirst() : "layer " + layer + " of the batch";
        LayerCache[] caches = new LayerCache[n];
        for (int i = 0; i < n; i++) {
            Sequence s = batch.get(i);
            s.checkOpen();
            caches[i] = s.filledLayer(layer);
            s.checkDtype("layer " + layer + " of " + s, dtype);
        }
        checkSize(what0 + " appended key", keys, n * itemBytes, shape);
        checkSize(what0 + " appended value", values, n * itemBytes, shape);
        for (int i = 0; i < n; i++) {
            String what = "layer " + layer + " of " + batch.get(i);
            int position = caches[i].fullTokens() + caches[i].visualTokens();
            FiniteCheck.requireFinite(what + " appended key", keys.asSlice(i * itemBytes, itemBytes), dtype,
                    g.kvHeads(), 1, g.headDim(), position);
            FiniteCheck.requireFinite(what + " appended value", values.asSlice(i * itemBytes, itemBytes), dtype,
                    g.kvHeads(), 1, g.headDim(), position);
        }
        // every full layer's larger block is reserved, allocated and filled before any is installed: a refusal for
        // one sequence leaves every layer of the batch as it was
        List<Growth> growths = new ArrayList<>();
        try {
            for (int i = 0; i < n; i++) {
                if (caches[i].fullTokens() == caches[i].fullCapacity()) {
                    growths.add(batch.get(i).prepareGrowth("layer " + layer + " of " + batch.get(i), caches[i]));
                }
            }
        } catch (RuntimeException | Error e) {
            for (Growth growth : growths) {
                growth.owner().abandon(growth, e);
            }
            throw e;
        }
        for (Growth growth : growths) {
            growth.owner().install(growth);
        }
        List<RowAppend> rows = new ArrayList<>(n);
        for (LayerCache c : caches) {
            rows.add(new RowAppend(c.full(), c.fullCapacity(), c.fullTokens()));
        }
        manager.storage().appendRows(keys, values, g.kvHeads(), caches[0].rowBytes(), rows);
        for (int i = 0; i < n; i++) {
            Sequence s = batch.get(i);
            caches[i].tokenAppended();
            MemoryUsage delta = new MemoryUsage(0, 0, 0, s.fp16Bytes(1));
            manager.accountant().reserve(delta, "appending to layer " + layer + " of " + s); // no bytes: cannot fail
            s.usage = s.usage.plus(delta);
        }
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

    /** The prompt's token ranges outside the visual spans, in order. */
    private List<TokenSpan> gaps() {
        List<TokenSpan> gaps = new ArrayList<>();
        int cursor = 0;
        for (TokenSpan span : visualSpans) {
            if (span.start() > cursor) {
                gaps.add(new TokenSpan(cursor, span.start()));
            }
            cursor = span.end();
        }
        if (cursor < promptTokens) {
            gaps.add(new TokenSpan(cursor, promptTokens));
        }
        return gaps;
    }

    /** The quantized span as decode attention reads it: read-only slices of its pair ({@link LayerPrefill}). */
    private LayerCache.StoredSpan spanView(QuantConfig quantConfig, LayerPrefill.SpanTarget target) {
        ModelGeometry g = manager.geometry();
        QuantizedSpan q = LayerPrefill.spanOf(quantConfig, g.kvHeads(), target.span().length(), g.headDim(),
                target.blocks().keys().segment().asReadOnly(), target.blocks().values().segment().asReadOnly());
        return new LayerCache.StoredSpan(q, target.blocks());
    }

    /** A full layer's larger block, reserved and filled with the layer's rows, not yet installed. */
    private record Growth(Sequence owner, LayerCache cache, BlockPair larger, int newCapacity, MemoryUsage reserved) {
    }

    /** Reserves, allocates and fills the larger block for {@code cache}; changes nothing when it throws. */
    private Growth prepareGrowth(String what, LayerCache cache) {
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
        Growth growth = new Growth(this, cache, larger, newCapacity, reserved);
        try {
            long rowBytes = cache.rowBytes();
            RowCopy rows = new RowCopy(0, capacity * rowBytes, 0, newCapacity * rowBytes,
                    cache.fullTokens() * rowBytes, g.kvHeads());
            KvStorage storage = manager.storage();
            storage.copy(cache.full().keys(), larger.keys(), rows);
            storage.copy(cache.full().values(), larger.values(), rows);
        } catch (RuntimeException | Error e) {
            abandon(growth, e);
            throw e;
        }
        return growth;
    }

    /** Frees a prepared growth that will not be installed, and gives its bytes back. */
    private void abandon(Growth growth, Throwable cause) {
        closeSuppressing(growth.larger().keys(), cause);
        closeSuppressing(growth.larger().values(), cause);
        manager.accountant().release(growth.reserved());
    }

    /** Swaps the prepared larger block in and frees the old one. */
    private void install(Growth growth) {
        BlockPair old = growth.cache().replaceFull(growth.larger(), growth.newCapacity());
        MemoryUsage freed = new MemoryUsage(old.byteSize(), 0, 0, 0);
        try {
            LayerCache.closeAll(List.of(old.keys(), old.values()));
        } finally { // the larger pair is installed: account for the swap even if freeing the old one failed
            manager.accountant().release(freed);
            usage = usage.plus(growth.reserved()).minus(freed);
        }
    }

    private MemoryUsage fullBlock(int capacity) {
        ModelGeometry g = manager.geometry();
        return new MemoryUsage(LayerCache.fullBlockBytes(g.kvHeads(), g.headDim(), manager.dtype(), capacity), 0, 0, 0);
    }

    private long spanCodeBytes(QuantConfig quantConfig, int tokens) {
        ModelGeometry g = manager.geometry();
        long keyParams = ChannelQuantizer.paramCount(quantConfig.keyGranularity(), g.kvHeads(), tokens, g.headDim());
        long valueParams = ChannelQuantizer.paramCount(quantConfig.valueGranularity(), g.kvHeads(), tokens,
                g.headDim());
        return ChannelQuantizer.bytesFor(quantConfig, g.kvHeads(), tokens, g.headDim())
                - quantConfig.paramType().byteSize() * 2L * (keyParams + valueParams);
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

    /** "layer L of this sequence", after checking the sequence is open and that layer exists and is not filled. */
    private String checkUnfilled(int layer) {
        checkOpen();
        checkLayerIndex(layer);
        String what = "layer " + layer + " of " + this;
        if (layers[layer] != null) {
            throw new IllegalStateException(what + " is already filled");
        }
        return what;
    }

    private void checkLayerIndex(int layer) {
        if (layer < 0 || layer >= layers.length) {
            throw new IndexOutOfBoundsException("layer " + layer + " of " + this + ": the model has "
                    + layers.length + " layers");
        }
    }

    private LayerCache filledLayer(int layer) {
        checkLayerIndex(layer);
        LayerCache cache = layers[layer];
        if (cache == null) {
            throw new IllegalStateException("layer " + layer + " of " + this + " is not filled yet");
        }
        return cache;
    }

    private void checkOpen() {
        switch (state) {
            case OPEN -> {
            }
            case CLOSED -> throw new IllegalStateException(this + " is closed");
            case FREED_BY_MANAGER -> throw new IllegalStateException(this
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
        String l = label;
        return l != null ? "sequence '" + l + "'" : "sequence #" + id + " (" + promptTokens + "-token prompt)";
    }
}
