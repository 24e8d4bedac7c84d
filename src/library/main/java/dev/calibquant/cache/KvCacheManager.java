package dev.calibquant.cache;

import dev.calibquant.quant.ChannelQuantizer;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * The root owner of a KV cache: its storage, its byte count and limit, and every {@link Sequence} created from it.
 *
 * <p><b>Memory.</b> Every byte lives in a block of the {@link KvStorage} given at construction (which the manager
 * now owns), allocated by one sequence layer and freed by it. {@link #usage()} counts live bytes by kind
 * (full-precision K/V, visual codes, visual scales) next to what fp16 would take; an optional byte limit is checked
 * before every allocation, all or nothing ({@link CacheMemoryLimitException}).
 *
 * <p><b>Closing.</b> {@link #close()} frees every sequence still open and the storage. If sequences were still open
 * it then throws {@link CacheLeakException} listing each with what it held: the memory is freed either way, but a
 * leak is reported, not hidden. Sequences closed by the manager throw {@link IllegalStateException} on further use.
 *
 * <p><b>Threads.</b> All methods are thread-safe. Different sequences can be filled, appended to and read from
 * different threads at once; the manager's own lock is held only to count bytes and register sequences.
 */
public final class KvCacheManager implements AutoCloseable {

    /** Byte limit meaning "none". */
    public static final long NO_LIMIT = Long.MAX_VALUE;

    private final ModelGeometry geometry;
    private final DType dtype;
    private final KvStorage storage;
    private final MemoryAccountant accountant;
    private final Map<Long, Sequence> open = new LinkedHashMap<>();
    private long nextId = 1;
    private boolean closed;

    /**
     * @param geometry the model's attention shape
     * @param dtype how full-precision keys and values are stored (and given): FP16, BF16 or FP32
     * @param storage where blocks are allocated; owned by the manager once the constructor returns (if it throws,
     *     the storage stays the caller's)
     * @param byteLimit most bytes live at once, or {@link #NO_LIMIT}
     * @throws IllegalArgumentException when {@code byteLimit} is not positive
     */
    public KvCacheManager(ModelGeometry geometry, DType dtype, KvStorage storage, long byteLimit) {
        this.geometry = Objects.requireNonNull(geometry, "geometry");
        this.dtype = Objects.requireNonNull(dtype, "dtype");
        this.storage = Objects.requireNonNull(storage, "storage");
        this.accountant = new MemoryAccountant(byteLimit);
    }

    /** A cache in off-heap host memory without a byte limit. */
    public static KvCacheManager onHost(ModelGeometry geometry, DType dtype) {
        return new KvCacheManager(geometry, dtype, new HostStorage(), NO_LIMIT);
    }

    /** A cache in off-heap host memory that never holds more than {@code byteLimit} bytes. */
    public static KvCacheManager onHost(ModelGeometry geometry, DType dtype, long byteLimit) {
        return new KvCacheManager(geometry, dtype, new HostStorage(), byteLimit);
    }

    public ModelGeometry geometry() {
        return geometry;
    }

    public DType dtype() {
        return dtype;
    }

    public long byteLimit() {
        return accountant.limitBytes();
    }

    /** Live bytes of all sequences, by kind. */
    public MemoryUsage usage() {
        return accountant.live();
    }

    public synchronized int openSequences() {
        return open.size();
    }

    /**
     * A new, empty sequence whose prompt has {@code promptTokens} tokens, of which {@code visualSpans} (any number,
     * any order, not overlapping) are quantized with {@code quantConfig}. Allocates nothing; {@link Sequence#fill}
     * does.
     *
     * @throws IllegalArgumentException when a span is outside the prompt or two overlap, the prompt is empty, or
     *     {@code quantConfig} is missing or does not fit the head dimension
     * @throws IllegalStateException when the manager is closed
     */
    public Sequence createSequence(int promptTokens, List<TokenSpan> visualSpans, QuantConfig quantConfig) {
        return createSequence(promptTokens, visualSpans, quantConfig, 0);
    }

    /**
     * {@link #createSequence(int, List, QuantConfig)} whose layers hold room for {@code reservedNewTokens} generated
     * tokens from the end of prefill on, so that appending them never grows (moves) a layer: a service that knows its
     * generation limit reserves it, counted against the byte limit at {@link Sequence#fill}.
     *
     * @throws IllegalArgumentException as above, or when {@code reservedNewTokens} is negative
     */
    public Sequence createSequence(int promptTokens, List<TokenSpan> visualSpans, QuantConfig quantConfig,
            int reservedNewTokens) {
        return createSequencePerLayer(promptTokens, visualSpans,
                quantConfig == null ? null : java.util.Collections.nCopies(geometry.layers(), quantConfig),
                reservedNewTokens);
    }

    /**
     * {@link #createSequence(int, List, QuantConfig, int)} whose layers quantize their visual spans each its own way:
     * {@code layerConfigs} holds one config per layer (bits spent where a model needs them, say 2-bit key channels
     * in the last layers only). Ignored, and may be null, when there are no visual spans.
     *
     * @throws IllegalArgumentException as above, or when {@code layerConfigs} does not hold one config per layer
     */
    public synchronized Sequence createSequencePerLayer(int promptTokens, List<TokenSpan> visualSpans,
            List<QuantConfig> layerConfigs, int reservedNewTokens) {
        checkOpen();
        if (reservedNewTokens < 0) {
            throw new IllegalArgumentException("reservedNewTokens must be >= 0, got " + reservedNewTokens);
        }
        if (promptTokens <= 0) {
            throw new IllegalArgumentException("a sequence needs at least one prompt token, got " + promptTokens);
        }
        List<TokenSpan> spans = TokenSpan.sortedWithin(Objects.requireNonNull(visualSpans, "visualSpans"),
                promptTokens);
        if (!spans.isEmpty()) {
            if (layerConfigs == null) {
                throw new IllegalArgumentException("visual spans " + spans + " need a quantization config");
            }
            if (layerConfigs.size() != geometry.layers()) {
                throw new IllegalArgumentException(layerConfigs.size() + " layer configs for a model of "
                        + geometry.layers() + " layers");
            }
            for (int layer = 0; layer < layerConfigs.size(); layer++) {
                QuantConfig c = layerConfigs.get(layer);
                if (c == null) {
                    throw new IllegalArgumentException("visual spans " + spans + " need a quantization config for "
                            + "layer " + layer);
                }
                ChannelQuantizer.bytesFor(c, geometry.kvHeads(), 1, geometry.headDim()); // checks bit packing
            }
        }
        Sequence sequence = new Sequence(this, nextId++, promptTokens, spans, spans.isEmpty() ? null : layerConfigs,
                reservedNewTokens);
        open.put(sequence.id(), sequence);
        return sequence;
    }

    /** A new sequence kept entirely in full precision (no visual spans). */
    public Sequence createSequence(int promptTokens) {
        return createSequence(promptTokens, List.of(), null);
    }

    /**
     * Appends one decode step's key and value to {@code layer} of every sequence of {@code batch}: {@code keys} and
     * {@code values} hold {@code [batch.size()][kvHeads][headDim]} of the cache's dtype, item {@code i} for sequence
     * {@code i}. The same as {@link Sequence#append} on each, but checked as a whole first (a refusal appends
     * nothing) and moved in one go: on a device storage, one upload and one kernel launch for the whole batch.
     * Holds the batch's sequence locks (taken in id order) until the rows are written.
     *
     * @throws IllegalArgumentException when the batch is empty, names a sequence twice or one of another manager
     * @throws dev.calibquant.quant.InvalidShapeException when a size or the dtype disagrees with the cache
     * @throws dev.calibquant.quant.NonFiniteInputException naming the first NaN or infinity
     * @throws CacheMemoryLimitException when growing a full layer would pass the byte limit
     * @throws IllegalStateException when a sequence is closed or the layer not filled; after any refusal no token
     *     is appended and no layer has grown (the larger blocks of full layers are all prepared before any is
     *     installed)
     */
    public void append(int layer, List<Sequence> batch, java.lang.foreign.MemorySegment keys,
            java.lang.foreign.MemorySegment values, DType dtype) {
        checkOpenSynchronized();
        Sequence.appendAll(this, layer, batch, keys, values, dtype);
    }

    private synchronized void checkOpenSynchronized() {
        checkOpen();
    }

    /**
     * Frees every sequence still open, then the storage; idempotent.
     *
     * @throws CacheLeakException after freeing everything, when sequences were still open
     */
    @Override
    public void close() {
        List<Sequence> toFree;
        synchronized (this) {
            if (closed) {
                return;
            }
            closed = true;
            toFree = new ArrayList<>(open.values());
            open.clear();
        }
        // Outside the manager's lock: a sequence takes its own lock, then the manager's (see unregister).
        List<CacheLeakException.LeakedSequence> leaked = new ArrayList<>();
        RuntimeException failure = null;
        for (Sequence s : toFree) {
            try {
                MemoryUsage held = s.freeForManager();
                if (held != null) {
                    leaked.add(new CacheLeakException.LeakedSequence(s.id(), s.toString(), held));
                }
            } catch (RuntimeException e) {
                failure = addTo(failure, e);
            }
        }
        try {
            storage.close();
        } catch (RuntimeException e) {
            failure = addTo(failure, e);
        }
        if (!leaked.isEmpty()) {
            CacheLeakException leak = new CacheLeakException(leaked);
            if (failure != null) {
                leak.addSuppressed(failure);
            }
            throw leak;
        }
        if (failure != null) {
            throw failure;
        }
    }

    private static RuntimeException addTo(RuntimeException failure, RuntimeException e) {
        if (failure == null) {
            return e;
        }
        failure.addSuppressed(e);
        return failure;
    }

    synchronized void unregister(Sequence sequence) {
        open.remove(sequence.id());
    }

    KvStorage storage() {
        return storage;
    }

    /**
     * Whether {@link Sequence#copyLayerFrom} can copy layers of {@code other}'s sequences into this manager's,
     * storage to storage (host to host, or device to device between GPUs), instead of through a download.
     */
    public boolean canCopyFrom(KvCacheManager other) {
        return other != this && storage.canCopyFrom(other.storage);
    }

    MemoryAccountant accountant() {
        return accountant;
    }

    private void checkOpen() {
        if (closed) {
            throw new IllegalStateException("KV cache manager is closed");
        }
    }
}
