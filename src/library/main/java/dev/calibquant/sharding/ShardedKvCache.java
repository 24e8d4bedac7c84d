package dev.calibquant.sharding;

import dev.calibquant.cache.CacheLeakException;
import dev.calibquant.cache.CacheMemoryLimitException;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.MemoryUsage;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.gpu.DeviceKvCache;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashSet;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import java.util.function.Supplier;

/**
 * One KV cache over several shards — GPUs of one host ({@link DeviceCacheShard}), or host memory with the CPU
 * attention ({@link HostCacheShard}) — placed as the model is run: whole sequences spread over the shards (data
 * parallelism), or every sequence's KV heads split across them (tensor parallelism); see {@link Placement}.
 *
 * <p><b>What it owns.</b> Its shards (closing the set closes them, and with them their device memory and kernels;
 * CUDA contexts stay the caller's), one thread per shard, and every {@link ShardedSequence} it created.
 * {@link #close()} frees the sequences still open and reports them ({@link CacheLeakException}).
 *
 * <p><b>Limits and accounting.</b> The byte limit is per shard (each shard's manager has its own), and so is the
 * accounting ({@link #shards()}, {@link CacheShard#usage()}); {@link #usage()} adds them up.
 *
 * <p><b>All or nothing.</b> What the set can check itself it checks for every shard before any shard does anything:
 * shapes and dtype, NaN and infinity, sequence states, each shard's free bytes for a fill; such a refusal throws the
 * cache's usual typed exception and changes nothing anywhere (so does a shard's own refusal of the input, which
 * it makes before writing). What a shard throws while doing its part (a device error, another thread having taken
 * the bytes) comes as a {@link ShardFailureException} naming the shard, after the parts other shards did were
 * undone: a fill or restore by freeing the layer on them ({@link Sequence#clearLayer}),
 * an append by dropping the token again ({@link Sequence#truncate}; a layer that grew keeps its larger block, as
 * {@link KvCacheManager#append} says), a decode by discarding their outputs (the caller's output is written only when
 * every shard succeeded). Undoing instead of writing into fresh sequences and swapping them in keeps a fill at one
 * copy of the layer. The other shards' sequences stay usable.
 *
 * <p><b>Concurrency.</b> An operation's parts run on their shards' threads at once (one thread per shard, so no
 * shard waits for another's host work; a part alone runs on the caller's thread, and so do the parts of a fill whose
 * input only the caller's thread may read). Outputs are gathered in the caller's order.
 *
 * <p><b>Threads.</b> All methods are thread-safe. An operation holds the locks of its sequences (taken in id order)
 * until it returns, so operations on different sequences run in parallel and a batch never deadlocks with another;
 * the parts of calls from several threads queue on each shard's thread. {@link #close()} waits for calls in flight.
 *
 * <p><b>Moving.</b> With a {@code BY_SEQUENCE} placement, {@link #move} takes a sequence to another shard, each
 * layer stored bit for bit, then the original freed. Between device shards (and between host shards) each layer goes
 * storage to storage ({@link Sequence#copyLayerFrom}: {@code cuMemcpyPeer} between GPUs, direct where
 * {@link dev.calibquant.cuda.CudaContext#enablePeerAccess peer access} is granted, staged by the driver otherwise);
 * between shards of other kinds it goes through host memory, downloaded from one and stored on the other
 * ({@link Sequence#restoreLayer}).
 */
public final class ShardedKvCache implements AutoCloseable {
    private final ModelGeometry geometry;
    private final Placement placement;
    private final DType dtype;
    private final List<CacheShard> shards;
    private final ShardThreads threads;
    /** Read-held by every call, write-held by {@link #close()}: closing waits for calls in flight. */
    private final ReentrantReadWriteLock lifecycle = new ReentrantReadWriteLock();
    // guarded by this
    private final Map<Long, ShardedSequence> open = new LinkedHashMap<>();
    private long nextId = 1;
    private int nextShard;
    private boolean closed;

    private ShardedKvCache(ModelGeometry geometry, Placement placement, DType dtype, List<CacheShard> shards) {
        this.geometry = geometry;
        this.placement = placement;
        this.dtype = dtype;
        this.shards = shards;
        this.threads = new ShardThreads(shards.stream().map(CacheShard::name).toList());
    }

    /**
     * A set over {@code shards}, which it owns once this returns (if it throws, they stay the caller's). Every shard's
     * manager must have {@link #shardGeometry} of {@code geometry} and one dtype, and the names must differ.
     *
     * @throws IllegalArgumentException naming the shard that does not fit, or when there is none
     */
    public static ShardedKvCache of(ModelGeometry geometry, Placement placement, List<? extends CacheShard> shards) {
        Objects.requireNonNull(geometry, "geometry");
        Objects.requireNonNull(placement, "placement");
        List<CacheShard> list = List.copyOf(shards);
        ModelGeometry each = shardGeometry(geometry, placement, list.size());
        DType dtype = list.getFirst().manager().dtype();
        Set<String> names = new HashSet<>();
        for (CacheShard s : list) {
            if (!names.add(s.name())) {
                throw new IllegalArgumentException("two shards are named '" + s.name() + "'");
            }
            if (!s.manager().geometry().equals(each)) {
                throw new IllegalArgumentException("shard '" + s.name() + "' has geometry " + s.manager().geometry()
                        + "; " + placement + " over " + list.size() + " shards needs " + each + " on each");
            }
            if (s.manager().dtype() != dtype) {
                throw new IllegalArgumentException("shard '" + s.name() + "' stores " + s.manager().dtype()
                        + "; shard '" + list.getFirst().name() + "' stores " + dtype);
            }
        }
        return new ShardedKvCache(geometry, placement, dtype, list);
    }

    /**
     * {@code shards} shards in host memory ({@link HostCacheShard}, named host-0, host-1, ...), each of at most
     * {@code byteLimitPerShard} bytes.
     *
     * @throws IllegalArgumentException when the placement cannot split the geometry over that many shards, or the
     *     limit is not positive
     */
    public static ShardedKvCache onHost(ModelGeometry geometry, DType dtype, int shards, long byteLimitPerShard,
            Placement placement) {
        ModelGeometry each = shardGeometry(geometry, placement, shards);
        List<CacheShard> made = new ArrayList<>();
        try {
            for (int i = 0; i < shards; i++) {
                made.add(HostCacheShard.onHost("host-" + i, each, dtype, byteLimitPerShard));
            }
            return of(geometry, placement, made);
        } catch (RuntimeException | Error e) {
            made.forEach(s -> closeSuppressing(s, e));
            throw e;
        }
    }

    /**
     * One {@link DeviceCacheShard} per context (named after its device and its place: cuda:0#0, cuda:1#1, ...), each
     * opened with {@link #shardGeometry} and at most {@code byteLimitPerShard} bytes. A context may appear several
     * times: several caches on one GPU, each with its own memory and stream. The contexts stay the caller's. Where
     * two devices can reach each other's memory, peer access is enabled both ways, so that {@link #move} copies
     * directly between them.
     *
     * @throws IllegalArgumentException when the placement cannot split the geometry over that many shards, or the GPU
     *     path cannot take it ({@link dev.calibquant.gpu.DeviceKvCache#unsupportedReason})
     * @throws dev.calibquant.cuda.CudaOutOfMemoryException when a device cannot hold its reservation; nothing opened
     *     is kept
     */
    public static ShardedKvCache onDevices(List<CudaContext> contexts, ModelGeometry geometry, long byteLimitPerShard,
            Placement placement) {
        ModelGeometry each = shardGeometry(geometry, placement, contexts.size());
        List<CacheShard> made = new ArrayList<>();
        try {
            for (CudaContext a : contexts) {
                for (CudaContext b : contexts) {
                    if (a != null && b != null && a != b) {
                        a.enablePeerAccess(b); // false, and nothing done, where the pair cannot
                    }
                }
            }
            for (int i = 0; i < contexts.size(); i++) {
                CudaContext context = Objects.requireNonNull(contexts.get(i), "context " + i);
                DeviceKvCache cache = DeviceKvCache.open(context, each, byteLimitPerShard);
                made.add(new DeviceCacheShard(cache.device() + "#" + i, cache));
            }
            return of(geometry, placement, made);
        } catch (RuntimeException | Error e) {
            made.forEach(s -> closeSuppressing(s, e));
            throw e;
        }
    }

    /**
     * The geometry each shard holds: the model's for the {@code BY_SEQUENCE} placements; for {@link Placement#BY_KV_HEAD}
     * {@code kvHeads / shards} KV heads and {@code queryHeads / shards} query heads.
     *
     * @throws IllegalArgumentException when there is no shard, or the KV heads do not divide evenly by the shards
     */
    public static ModelGeometry shardGeometry(ModelGeometry geometry, Placement placement, int shards) {
        Objects.requireNonNull(geometry, "geometry");
        Objects.requireNonNull(placement, "placement");
        if (shards <= 0) {
            throw new IllegalArgumentException("a sharded cache needs at least one shard, got " + shards);
        }
        if (placement.bySequence()) {
            return geometry;
        }
        if (geometry.kvHeads() % shards != 0) {
            throw new IllegalArgumentException("BY_KV_HEAD splits the " + geometry.kvHeads() + " KV heads evenly "
                    + "across the shards, and " + shards + " shards do not divide them: use a number of shards that "
                    + "divides " + geometry.kvHeads() + ", or a BY_SEQUENCE placement");
        }
        return new ModelGeometry(geometry.layers(), geometry.queryHeads() / shards, geometry.kvHeads() / shards,
                geometry.headDim());
    }

    /** The model's geometry (all heads). */
    public ModelGeometry geometry() {
        return geometry;
    }

    /** How sequences are placed. */
    public Placement placement() {
        return placement;
    }

    /** How full-precision keys and values are stored and given. */
    public DType dtype() {
        return dtype;
    }

    /** The shards, in order: a sequence's {@link ShardedSequence#shards()} and {@link #move} index this list. */
    public List<CacheShard> shards() {
        return shards;
    }

    /** Live bytes of all shards, by kind. */
    public MemoryUsage usage() {
        MemoryUsage total = MemoryUsage.ZERO;
        for (CacheShard s : shards) {
            total = total.plus(s.usage());
        }
        return total;
    }

    /** Sequences created and not yet closed. */
    public synchronized int openSequences() {
        return open.size();
    }

    /**
     * A new, empty sequence placed by the set's {@link #placement()}: as {@link KvCacheManager#createSequence(int,
     * List, QuantConfig, int)}, on one shard or (BY_KV_HEAD) on all of them. Allocates nothing.
     *
     * @throws IllegalArgumentException as the manager's createSequence does
     * @throws IllegalStateException when the set is closed
     */
    public ShardedSequence createSequence(int promptTokens, List<TokenSpan> visualSpans, QuantConfig quantConfig,
            int reservedNewTokens) {
        return create(-1, promptTokens, visualSpans, quantConfig, reservedNewTokens);
    }

    /** A new sequence kept entirely in full precision. */
    public ShardedSequence createSequence(int promptTokens) {
        return createSequence(promptTokens, List.of(), null, 0);
    }

    /**
     * {@link #createSequence} on the shard the caller picks (index in {@link #shards()}), whatever the policy: the hook
     * for a service that places sequences itself (prefix affinity, a router's decision).
     *
     * @throws IllegalStateException when the placement is {@link Placement#BY_KV_HEAD} (every sequence is on every
     *     shard) or the set is closed
     * @throws IndexOutOfBoundsException when there is no such shard
     */
    public ShardedSequence createSequenceOn(int shard, int promptTokens, List<TokenSpan> visualSpans,
            QuantConfig quantConfig, int reservedNewTokens) {
        if (!placement.bySequence()) {
            throw new IllegalStateException("BY_KV_HEAD places every sequence on every shard; there is no shard to pick");
        }
        Objects.checkIndex(shard, shards.size());
        return create(shard, promptTokens, visualSpans, quantConfig, reservedNewTokens);
    }

    private ShardedSequence create(int chosen, int promptTokens, List<TokenSpan> visualSpans, QuantConfig quantConfig,
            int reservedNewTokens) {
        lifecycle.readLock().lock();
        try {
            synchronized (this) {
                checkOpen();
                int[] on = placement.bySequence() ? new int[] {chosen >= 0 ? chosen : pick()} : allShards();
                Sequence[] parts = new Sequence[on.length];
                try {
                    for (int i = 0; i < on.length; i++) {
                        parts[i] = shards.get(on[i]).manager().createSequence(promptTokens, visualSpans, quantConfig,
                                reservedNewTokens);
                    }
                } catch (RuntimeException | Error e) {
                    for (Sequence p : parts) {
                        if (p != null) {
                            closeSuppressing(p, e);
                        }
                    }
                    throw e;
                }
                if (placement == Placement.BY_SEQUENCE_ROUND_ROBIN && chosen < 0) {
                    nextShard = (on[0] + 1) % shards.size();
                }
                ShardedSequence s = new ShardedSequence(this, nextId++, parts, on);
                open.put(s.id(), s);
                return s;
            }
        } finally {
            lifecycle.readLock().unlock();
        }
    }

    /** The shard a new sequence goes to; caller holds this set's lock. */
    private int pick() {
        if (placement == Placement.BY_SEQUENCE_ROUND_ROBIN) {
            return nextShard;
        }
        int best = 0;
        long bestFree = Long.MIN_VALUE;
        for (int i = 0; i < shards.size(); i++) {
            long free = shards.get(i).freeBytes();
            for (ShardedSequence s : open.values()) {
                free -= s.pendingBytes(i);
            }
            if (free > bestFree) {
                best = i;
                bestFree = free;
            }
        }
        return best;
    }

    private int[] allShards() {
        int[] all = new int[shards.size()];
        for (int i = 0; i < all.length; i++) {
            all[i] = i;
        }
        return all;
    }

    /** See {@link ShardedSequence#fill}. */
    void fill(ShardedSequence sequence, int layer, MemorySegment keys, MemorySegment values, DType dtype) {
        Objects.requireNonNull(keys, "keys");
        Objects.requireNonNull(values, "values");
        Objects.requireNonNull(dtype, "dtype");
        withLocks(List.of(sequence), () -> {
            String what = "layer " + layer + " of " + sequence;
            Sequence[] parts = checkUnfilled(sequence, layer, what);
            Inputs.checkDtype(what, dtype, this.dtype);
            int kvHeads = geometry.kvHeads();
            int prompt = sequence.promptTokens();
            long bytes = (long) kvHeads * prompt * geometry.headDim() * dtype.byteSize();
            String shape = "[" + kvHeads + "][" + prompt + "][" + geometry.headDim() + "] " + dtype;
            Inputs.checkSize(what + " keys", keys, bytes, shape);
            Inputs.checkSize(what + " values", values, bytes, shape);
            if (parts.length > 1) { // one part checks its input itself before it writes: no second pass over it
                Inputs.requireFinite(what + " keys", keys, dtype, kvHeads, prompt, geometry.headDim(), 0);
                Inputs.requireFinite(what + " values", values, dtype, kvHeads, prompt, geometry.headDim(), 0);
            }
            int[] on = sequence.shardIndexes();
            for (int i = 0; i < parts.length; i++) {
                CacheShard shard = shards.get(on[i]);
                if (parts[i].fillBytes() > shard.freeBytes()) {
                    MemoryUsage held = shard.usage();
                    throw new CacheMemoryLimitException("filling " + what + " on shard '" + shard.name() + "'",
                            parts[i].fillBytes(), held.totalBytes(), shard.byteLimit());
                }
            }
            long slice = bytes / parts.length;
            Runnable[] work = new Runnable[parts.length];
            for (int i = 0; i < parts.length; i++) {
                Sequence part = parts[i];
                MemorySegment k = keys.asSlice(i * slice, slice);
                MemorySegment v = values.asSlice(i * slice, slice);
                work[i] = () -> part.fill(layer, k, v, dtype);
            }
            ShardRuns.runAll(threads, shards, List.of(sequence), "filling " + what, on, work,
                    Inputs.readableByShardThreads(keys, values), i -> parts[i].clearLayer(layer));
            sequence.layerFilled();
            return null;
        });
    }

    /** See {@link ShardedSequence#restoreLayer}. */
    void restoreLayer(ShardedSequence sequence, int layer, LayerKvView from) {
        Objects.requireNonNull(from, "from");
        withLocks(List.of(sequence), () -> {
            String what = "layer " + layer + " of " + sequence;
            Sequence[] parts = checkUnfilled(sequence, layer, what);
            if (from.kvHeads() != geometry.kvHeads() || from.headDim() != geometry.headDim()) {
                throw new InvalidShapeException(what + ": the view has " + from.kvHeads() + " KV heads of dim "
                        + from.headDim() + "; the set holds " + geometry.kvHeads() + " of dim " + geometry.headDim());
            }
            Inputs.checkDtype(what, from.dtype(), dtype);
            int heads = geometry.kvHeads() / parts.length;
            Runnable[] work = new Runnable[parts.length];
            for (int i = 0; i < parts.length; i++) {
                Sequence part = parts[i];
                LayerKvView slice = parts.length == 1 ? from : HeadSlices.slice(from, i * heads, heads);
                work[i] = () -> part.restoreLayer(layer, slice);
            }
            ShardRuns.runAll(threads, shards, List.of(sequence), "restoring " + what, sequence.shardIndexes(), work,
                    readableByShardThreads(from), i -> parts[i].clearLayer(layer));
            sequence.layerFilled();
            return null;
        });
    }

    private static boolean readableByShardThreads(LayerKvView view) {
        List<MemorySegment> all = new ArrayList<>(List.of(view.fullKeys(), view.fullValues()));
        for (QuantizedSpan q : view.visualSpans()) {
            all.addAll(q.segments());
        }
        return Inputs.readableByShardThreads(all.toArray(MemorySegment[]::new));
    }

    /** The sequence's parts, after checking it is usable and {@code layer} exists and is not filled. */
    private Sequence[] checkUnfilled(ShardedSequence sequence, int layer, String what) {
        sequence.checkUsable();
        Objects.checkIndex(layer, geometry.layers());
        Sequence[] parts = sequence.parts();
        if (parts[0].isFilled(layer)) {
            throw new IllegalStateException(what + " is already filled");
        }
        return parts;
    }

    /**
     * Appends one decode step's key and value to {@code layer} of every sequence of {@code batch}: {@code keys} and
     * {@code values} hold {@code [batch.size()][kvHeads][headDim]} of the set's dtype, item {@code i} for sequence
     * {@code i}. Each shard gets its sequences' items (BY_KV_HEAD: its head range of every item), gathered into one
     * batch append per shard, all shards at once.
     *
     * @throws IllegalArgumentException when the batch is empty, names a sequence twice or one of another set
     * @throws InvalidShapeException when a size or the dtype disagrees with the set
     * @throws dev.calibquant.quant.NonFiniteInputException naming the first NaN or infinity
     * @throws IllegalStateException when a sequence is closed or its layer not filled
     * @throws ShardFailureException when a shard failed its part (a byte limit reached growing a layer, a device
     *     error); the tokens other shards appended were dropped again
     */
    public void append(int layer, List<ShardedSequence> batch, MemorySegment keys, MemorySegment values,
            DType dtype) {
        Objects.requireNonNull(keys, "keys");
        Objects.requireNonNull(values, "values");
        Objects.requireNonNull(dtype, "dtype");
        withLocks(batch, () -> {
            String what = batch.size() == 1 ? "layer " + layer + " of " + batch.getFirst()
                    : "layer " + layer + " of the batch";
            checkFilled(batch, layer);
            Inputs.checkDtype(what, dtype, this.dtype);
            int kvHeads = geometry.kvHeads();
            long rowBytes = (long) geometry.headDim() * dtype.byteSize();
            long itemBytes = kvHeads * rowBytes;
            String shape = "[" + batch.size() + "][" + kvHeads + "][" + geometry.headDim() + "] " + dtype;
            Inputs.checkSize(what + " appended key", keys, batch.size() * itemBytes, shape);
            Inputs.checkSize(what + " appended value", values, batch.size() * itemBytes, shape);
            for (int b = 0; b < batch.size(); b++) {
                String item = "layer " + layer + " of " + batch.get(b);
                int position = batch.get(b).parts()[0].tokens(layer);
                Inputs.requireFinite(item + " appended key", keys.asSlice(b * itemBytes, itemBytes), dtype, kvHeads, 1,
                        geometry.headDim(), position);
                Inputs.requireFinite(item + " appended value", values.asSlice(b * itemBytes, itemBytes), dtype,
                        kvHeads, 1, geometry.headDim(), position);
            }
            List<ShardPart> split = ShardPart.split(placement, shards.size(), batch, kvHeads);
            if (split.size() == 1 && split.getFirst().coversAll(batch.size(), kvHeads)) {
                ShardPart p = split.getFirst(); // one shard's batch append, all or nothing by itself
                KvCacheManager manager = shards.get(p.shard()).manager();
                ShardRuns.runAll(threads, shards, batch, "appending to " + what, new int[] {p.shard()},
                        new Runnable[] {() -> manager.append(layer, p.sequences(), keys, values, dtype)}, false, null);
                return null;
            }
            try (Arena arena = Arena.ofShared()) {
                int[] on = new int[split.size()];
                Runnable[] work = new Runnable[split.size()];
                List<int[]> before = new ArrayList<>();
                for (int g = 0; g < split.size(); g++) {
                    ShardPart p = split.get(g);
                    long bytes = p.items().length * p.heads() * rowBytes;
                    MemorySegment k = arena.allocate(bytes, 64);
                    MemorySegment v = arena.allocate(bytes, 64);
                    HeadSlices.gather(keys, kvHeads, p.items(), p.firstHead(), p.heads(), rowBytes, k);
                    HeadSlices.gather(values, kvHeads, p.items(), p.firstHead(), p.heads(), rowBytes, v);
                    int[] tokens = new int[p.sequences().size()];
                    for (int j = 0; j < tokens.length; j++) {
                        tokens[j] = p.sequences().get(j).tokens(layer);
                    }
                    before.add(tokens);
                    on[g] = p.shard();
                    KvCacheManager manager = shards.get(p.shard()).manager();
                    work[g] = () -> manager.append(layer, p.sequences(), k, v, dtype);
                }
                ShardRuns.runAll(threads, shards, batch, "appending to " + what, on, work, true, g -> {
                    for (int j = 0; j < before.get(g).length; j++) {
                        split.get(g).sequences().get(j).truncate(layer, before.get(g)[j]);
                    }
                });
            }
            return null;
        });
    }

    /**
     * One decode step of {@code layer} over {@code batch} with {@code calibration}: queries
     * {@code [batch.size()][queryHeads][headDim]} of {@code queryType} ({@code queryHeads} the model's), output
     * {@code out} fp32 of the same shape, in the caller's order. Each shard decodes its sequences (BY_KV_HEAD: its
     * query heads of every sequence), all shards at once; {@code out} is written only when every shard succeeded.
     *
     * @throws IllegalArgumentException when the batch is empty, names a sequence twice or one of another set
     * @throws InvalidShapeException when a size disagrees with the batch and the model
     * @throws dev.calibquant.quant.NonFiniteInputException for a NaN or infinite query
     * @throws IllegalStateException when a sequence is closed or its layer not filled
     * @throws ShardFailureException naming the shard whose decode failed ({@code out} untouched; the sequences of
     *     every shard stay usable)
     */
    public void decode(Calibration calibration, int layer, List<ShardedSequence> batch, MemorySegment queries,
            DType queryType, int queryHeads, MemorySegment out) {
        Objects.requireNonNull(calibration, "calibration");
        Objects.requireNonNull(queries, "queries");
        Objects.requireNonNull(queryType, "queryType");
        Objects.requireNonNull(out, "out");
        withLocks(batch, () -> {
            checkFilled(batch, layer);
            if (queryHeads != geometry.queryHeads()) {
                throw new InvalidShapeException("queryHeads " + queryHeads + ": the model has "
                        + geometry.queryHeads());
            }
            int d = geometry.headDim();
            long rows = (long) batch.size() * queryHeads;
            String shape = "[" + batch.size() + "][" + queryHeads + "][" + d + "] ";
            Inputs.checkSize("queries", queries, rows * d * queryType.byteSize(), shape + queryType);
            Inputs.checkSize("outputs", out, rows * d * Float.BYTES, shape + "FP32");
            long itemBytes = (long) queryHeads * d * queryType.byteSize();
            for (int b = 0; b < batch.size(); b++) {
                Inputs.requireFinite("queries of sequence " + b + " of the batch", queries.asSlice(b * itemBytes,
                        itemBytes), queryType, queryHeads, 1, d, -1);
            }
            List<ShardPart> split = ShardPart.split(placement, shards.size(), batch, queryHeads);
            if (split.size() == 1 && split.getFirst().coversAll(batch.size(), queryHeads)) {
                ShardPart p = split.getFirst(); // the caller's segments as they are
                CacheShard shard = shards.get(p.shard());
                ShardRuns.runAll(threads, shards, batch, "decoding layer " + layer, new int[] {p.shard()},
                        new Runnable[] {() -> shard.decode(calibration, layer, p.sequences(), queries, queryType,
                                queryHeads, out)}, false, null);
                return null;
            }
            long qRow = (long) d * queryType.byteSize();
            long oRow = (long) d * Float.BYTES;
            try (Arena arena = Arena.ofShared()) {
                int[] on = new int[split.size()];
                Runnable[] work = new Runnable[split.size()];
                MemorySegment[] outs = new MemorySegment[split.size()];
                for (int g = 0; g < split.size(); g++) {
                    ShardPart p = split.get(g);
                    MemorySegment q = arena.allocate(p.items().length * p.heads() * qRow, 64);
                    HeadSlices.gather(queries, queryHeads, p.items(), p.firstHead(), p.heads(), qRow, q);
                    MemorySegment o = arena.allocate(p.items().length * p.heads() * oRow, 64);
                    outs[g] = o;
                    on[g] = p.shard();
                    CacheShard shard = shards.get(p.shard());
                    work[g] = () -> shard.decode(calibration, layer, p.sequences(), q, queryType, p.heads(), o);
                }
                ShardRuns.runAll(threads, shards, batch, "decoding layer " + layer + " of the batch", on, work, true,
                        null);
                for (int g = 0; g < split.size(); g++) {
                    ShardPart p = split.get(g);
                    HeadSlices.scatter(outs[g], queryHeads, p.items(), p.firstHead(), p.heads(), oRow, out);
                }
            }
            return null;
        });
    }

    /** Checks that every sequence of the batch is usable and {@code layer} filled. */
    private void checkFilled(List<ShardedSequence> batch, int layer) {
        Objects.checkIndex(layer, geometry.layers());
        for (ShardedSequence s : batch) {
            s.checkUsable();
            if (!s.parts()[0].isFilled(layer)) {
                throw new IllegalStateException("layer " + layer + " of " + s + " is not filled yet");
            }
        }
    }

    /**
     * Moves {@code sequence} to shard {@code target} (index in {@link #shards()}): each filled layer is stored bit for
     * bit on the target, storage to storage where the two shards' storages can ({@link Sequence#copyLayerFrom}), else
     * downloaded from its shard and restored ({@link Sequence#restoreLayer}); then the original is freed. Nothing
     * changes when it fails; moving to the shard it is on does nothing.
     *
     * @throws IllegalStateException when the placement is {@link Placement#BY_KV_HEAD}, or the sequence is closed
     * @throws IndexOutOfBoundsException when there is no such shard
     * @throws CacheMemoryLimitException when the target has fewer free bytes than the sequence holds
     * @throws ShardFailureException naming the shard that failed a download or a store
     */
    public void move(ShardedSequence sequence, int target) {
        if (!placement.bySequence()) {
            throw new IllegalStateException("BY_KV_HEAD keeps every sequence on every shard: there is nothing to move");
        }
        Objects.checkIndex(target, shards.size());
        withLocks(List.of(sequence), () -> {
            sequence.checkUsable();
            int from = sequence.shardIndexes()[0];
            if (from == target) {
                return null;
            }
            Sequence source = sequence.parts()[0];
            CacheShard src = shards.get(from);
            CacheShard dst = shards.get(target);
            String what = sequence + " from shard '" + src.name() + "' to shard '" + dst.name() + "'";
            long need = source.usage().totalBytes();
            if (need > dst.freeBytes()) {
                throw new CacheMemoryLimitException("moving " + what, need, dst.usage().totalBytes(),
                        dst.byteLimit());
            }
            Sequence copy = dst.manager().createSequencePerLayer(sequence.promptTokens(), sequence.visualSpans(),
                    source.quantConfigs(), sequence.reservedNewTokens());
            try {
                if (sequence.label() != null) {
                    copy.label(sequence.label());
                }
                boolean direct = dst.manager().canCopyFrom(src.manager());
                for (int layer = 0; layer < geometry.layers(); layer++) {
                    if (!source.isFilled(layer)) {
                        continue;
                    }
                    int l = layer;
                    if (direct) { // storage to storage: device to device between GPUs
                        runOn(dst, "copying layer " + layer + " while moving " + what, () -> {
                            copy.copyLayerFrom(l, source);
                            return null;
                        });
                        continue;
                    }
                    try (Arena arena = Arena.ofConfined()) {
                        LayerKvView view = runOn(src, "downloading layer " + layer + " while moving " + what,
                                () -> src.download(source, l, arena));
                        runOn(dst, "storing layer " + layer + " while moving " + what, () -> {
                            copy.restoreLayer(l, view);
                            return null;
                        });
                    }
                }
            } catch (RuntimeException | Error e) {
                closeSuppressing(copy, e);
                throw e;
            }
            sequence.moved(copy, target);
            runOn(src, "freeing " + sequence + " on it after the move (the sequence is on shard '" + dst.name() + "')",
                    () -> {
                        source.close();
                        return null;
                    });
            return null;
        });
    }

    /** {@code action}'s result; what it throws comes as a {@link ShardFailureException} naming {@code shard}. */
    private static <T> T runOn(CacheShard shard, String operation, Supplier<T> action) {
        try {
            return action.get();
        } catch (RuntimeException | OutOfMemoryError e) {
            throw new ShardFailureException(shard.name(), operation, e);
        }
    }

    /** See {@link ShardedSequence#download}. */
    LayerKvView download(ShardedSequence sequence, int layer, Arena arena) {
        Objects.requireNonNull(arena, "arena");
        return withLocks(List.of(sequence), () -> {
            sequence.checkUsable();
            Sequence[] parts = sequence.parts();
            int[] on = sequence.shardIndexes();
            List<LayerKvView> views = new ArrayList<>(parts.length);
            for (int i = 0; i < parts.length; i++) {
                CacheShard shard = shards.get(on[i]);
                Sequence part = parts[i];
                views.add(runOn(shard, "downloading layer " + layer + " of " + sequence,
                        () -> shard.download(part, layer, arena)));
            }
            return views.size() == 1 ? views.getFirst() : HeadSlices.merge(views, arena);
        });
    }

    /** See {@link ShardedSequence#close()}. */
    void close(ShardedSequence sequence) {
        lifecycle.readLock().lock();
        try {
            RuntimeException failure;
            synchronized (sequence) {
                if (!sequence.markClosed()) {
                    return;
                }
                failure = closeParts(sequence);
            }
            synchronized (this) {
                open.remove(sequence.id());
            }
            if (failure != null) {
                throw failure;
            }
        } finally {
            lifecycle.readLock().unlock();
        }
    }

    /** Closes every part of a sequence marked closed; returns the first failure (naming its shard), or null. */
    private RuntimeException closeParts(ShardedSequence sequence) {
        RuntimeException failure = null;
        Sequence[] parts = sequence.parts();
        int[] on = sequence.shardIndexes();
        for (int i = 0; i < parts.length; i++) {
            try {
                parts[i].close();
            } catch (RuntimeException e) {
                ShardFailureException f = new ShardFailureException(shards.get(on[i]).name(), "freeing " + sequence,
                        e);
                if (failure == null) {
                    failure = f;
                } else {
                    failure.addSuppressed(f);
                }
            }
        }
        return failure;
    }

    /**
     * Runs {@code action} holding the set open and the lock of every sequence of {@code batch}, taken in id order.
     *
     * @throws IllegalArgumentException when the batch is empty, names a sequence twice or one of another set
     * @throws IllegalStateException when the set is closed
     */
    private <T> T withLocks(List<ShardedSequence> batch, Supplier<T> action) {
        Objects.requireNonNull(batch, "batch");
        if (batch.isEmpty()) {
            throw new IllegalArgumentException("the batch is empty");
        }
        IdentityHashMap<ShardedSequence, Boolean> seen = new IdentityHashMap<>();
        for (ShardedSequence s : batch) {
            Objects.requireNonNull(s, "sequence");
            if (s.cache() != this) {
                throw new IllegalArgumentException(s + " belongs to another sharded cache");
            }
            if (seen.put(s, Boolean.TRUE) != null) {
                throw new IllegalArgumentException(s + " appears twice in the batch");
            }
        }
        List<ShardedSequence> order = new ArrayList<>(batch);
        order.sort(Comparator.comparingLong(ShardedSequence::id));
        lifecycle.readLock().lock();
        try {
            synchronized (this) {
                checkOpen();
            }
            return locked(order, 0, action);
        } finally {
            lifecycle.readLock().unlock();
        }
    }

    private static <T> T locked(List<ShardedSequence> order, int i, Supplier<T> action) {
        if (i == order.size()) {
            return action.get();
        }
        synchronized (order.get(i)) {
            return locked(order, i + 1, action);
        }
    }

    /**
     * Waits for calls in flight, frees every sequence still open, closes the shards and stops their threads.
     * Idempotent.
     *
     * @throws CacheLeakException after freeing everything, when sequences were still open
     */
    @Override
    public void close() {
        lifecycle.writeLock().lock();
        try {
            List<ShardedSequence> left;
            synchronized (this) {
                if (closed) {
                    return;
                }
                closed = true;
                left = new ArrayList<>(open.values());
                open.clear();
            }
            List<CacheLeakException.LeakedSequence> leaked = new ArrayList<>();
            List<Throwable> failures = new ArrayList<>();
            for (ShardedSequence s : left) {
                synchronized (s) {
                    leaked.add(new CacheLeakException.LeakedSequence(s.id(), s.toString(), s.usage()));
                    s.markClosed();
                    RuntimeException f = closeParts(s);
                    if (f != null) {
                        failures.add(f);
                    }
                }
            }
            for (CacheShard shard : shards) {
                try {
                    shard.close();
                } catch (RuntimeException e) {
                    failures.add(new ShardFailureException(shard.name(), "closing", e));
                }
            }
            threads.close();
            RuntimeException thrown = leaked.isEmpty() ? null : new CacheLeakException(leaked);
            for (Throwable f : failures) {
                if (thrown == null) {
                    thrown = (RuntimeException) f;
                } else {
                    thrown.addSuppressed(f);
                }
            }
            if (thrown != null) {
                throw thrown;
            }
        } finally {
            lifecycle.writeLock().unlock();
        }
    }

    private void checkOpen() {
        if (closed) {
            throw new IllegalStateException("sharded KV cache is closed");
        }
    }

    private static void closeSuppressing(AutoCloseable c, Throwable primary) {
        try {
            c.close();
        } catch (Exception e) {
            primary.addSuppressed(e);
        }
    }

    @Override
    public String toString() {
        return "sharded KV cache (" + placement + " over " + shards.size() + " shards, " + geometry + ")";
    }
}
