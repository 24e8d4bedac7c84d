package dev.calibquant.gpu;

import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.attention.NonFiniteResultException;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cuda.CudaStream;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.cuda.PinnedHostBuffer;
import dev.calibquant.kernels.CalibQuantKernels;
import dev.calibquant.kernels.CalibQuantKernels.CachePointers;
import dev.calibquant.kernels.CalibQuantKernels.DevicePointer;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.profiling.Nvtx;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.CalibrationPolicy;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * Decode attention on the GPU over the sequences of a {@link dev.calibquant.cache.KvCacheManager} whose bytes live in
 * a {@link DeviceStorage}: the same {@link DecodeAttention} interface as the CPU implementations, over the same views
 * ({@link Sequence#layer}), with the cache read in place by the CalibQuant kernels (CalibQuant decode when the batch
 * has quantized spans, flash-decoding over full-precision tokens when it has none). The index tables are built from
 * where the views' blocks lie in the storage ({@link ManagedTables}); everything runs on the storage's stream, under
 * its lock.
 *
 * <p>Takes fp16 caches whose spans are quantized per channel at 1, 2 or 4 bits, head dim 64 or 128, up to the
 * kernels' group size; other caches are refused with a message (the CPU path runs them). Queries of any
 * {@link DType} are rounded to fp16, as the kernels read them. As on the host, a view is valid until the next append
 * to its layer; {@link #decode(int, List, MemorySegment, DType, int, MemorySegment)} takes the views itself and holds
 * the sequences' locks for the step.
 */
public final class ManagedDecodeAttention implements DecodeAttention, AutoCloseable {
    private final DeviceStorage storage;
    private final KernelCatalog catalog;
    private final Calibration calibration;
    private final int multiprocessors;
    private final Nvtx.Name stepRange = Nvtx.rangeName(Nvtx.DECODE_STEP);
    // guarded by the storage's lock
    private final Staging scratch;
    private final Map<Integer, CalibQuantKernels> kernels = new HashMap<>();
    private DecodePlan lastPlan;
    private boolean poisonOutputs;
    private boolean closed;

    /**
     * @param storage the storage of the manager whose sequences are decoded (made by the caller, see
     *     {@link DeviceStorage}); this attention does not own it
     * @param catalog the kernels, loaded in the storage's context
     * @param calibration how visual scores are calibrated (as for {@link dev.calibquant.attention.CpuCalibQuantAttention})
     */
    public ManagedDecodeAttention(DeviceStorage storage, KernelCatalog catalog, Calibration calibration) {
        this.storage = Objects.requireNonNull(storage, "storage");
        this.catalog = Objects.requireNonNull(catalog, "catalog");
        this.calibration = Objects.requireNonNull(calibration, "calibration");
        if (catalog.context() != storage.context()) {
            throw new IllegalArgumentException("the kernels are loaded in another CUDA context than the storage's");
        }
        this.multiprocessors = storage.context().device().properties().multiprocessors();
        this.scratch = new Staging(storage.context());
    }

    /** Fill the device output with NaN before every launch, so a kernel that skips an element cannot go unseen. */
    public void poisonOutputs(boolean on) {
        synchronized (storage) {
            poisonOutputs = on;
        }
    }

    /** The plan of the last step (for tests' tolerances: work items, calibration mode). */
    DecodePlan lastPlan() {
        synchronized (storage) {
            return lastPlan;
        }
    }

    /** The kernels' token block for {@code headDim} (tolerances depend on it). */
    int decodeBlock(int headDim) {
        synchronized (storage) {
            return kernelsFor(headDim, 1).decodeBlock();
        }
    }

    /**
     * One decode step of {@code layer} over {@code batch}: takes each sequence's view itself, holding every
     * sequence's lock (in id order) until the output is written, so no append or close moves a block meanwhile.
     */
    public void decode(int layer, List<Sequence> batch, MemorySegment queries, DType queryType, int queryHeads,
            MemorySegment out) {
        Objects.requireNonNull(batch, "batch");
        Map<Sequence, Boolean> seen = new IdentityHashMap<>();
        for (Sequence s : batch) {
            if (seen.put(Objects.requireNonNull(s, "sequence"), Boolean.TRUE) != null) {
                throw new IllegalArgumentException(s + " appears twice in the batch");
            }
        }
        List<Sequence> order = new ArrayList<>(batch);
        order.sort(Comparator.comparingLong(Sequence::id).thenComparingInt(System::identityHashCode));
        decodeLocked(order, 0, layer, batch, queries, queryType, queryHeads, out);
    }

    private void decodeLocked(List<Sequence> order, int locked, int layer, List<Sequence> batch, MemorySegment queries,
            DType queryType, int queryHeads, MemorySegment out) {
        if (locked == order.size()) {
            List<LayerKvView> views = new ArrayList<>(batch.size());
            for (Sequence s : batch) {
                views.add(s.layer(layer));
            }
            decode(views, queries, queryType, queryHeads, out);
            return;
        }
        synchronized (order.get(locked)) { // Sequence's methods lock the sequence, then the storage: same order here
            decodeLocked(order, locked + 1, layer, batch, queries, queryType, queryHeads, out);
        }
    }

    @Override
    public void decode(List<? extends LayerKvView> batch, MemorySegment queries, DType queryType, int queryHeads,
            MemorySegment out) {
        Objects.requireNonNull(batch, "batch");
        Objects.requireNonNull(queries, "queries");
        Objects.requireNonNull(queryType, "queryType");
        Objects.requireNonNull(out, "out");
        if (batch.isEmpty()) {
            throw new InvalidShapeException("decode of an empty batch");
        }
        LayerKvView first = Objects.requireNonNull(batch.getFirst(), "sequence 0");
        int kvh = first.kvHeads();
        int d = first.headDim();
        if (d != 64 && d != 128) {
            throw new InvalidShapeException("the GPU kernels are compiled for head dim 64 and 128, not " + d);
        }
        if (kvh <= 0 || queryHeads <= 0 || queryHeads % kvh != 0) {
            throw new InvalidShapeException(queryHeads + " query heads is not a positive multiple of " + kvh
                    + " KV heads");
        }
        int bits = 0;
        for (int b = 0; b < batch.size(); b++) {
            bits = checkView(b, Objects.requireNonNull(batch.get(b), "sequence " + b), kvh, d, bits);
        }
        long elements = (long) batch.size() * queryHeads * d;
        if (queries.byteSize() != elements * queryType.byteSize()) {
            throw new InvalidShapeException("queries hold " + queries.byteSize() + " bytes; expected " + queryType
                    + " [" + batch.size() + "][" + queryHeads + "][" + d + "] = " + elements * queryType.byteSize());
        }
        if (out.byteSize() != elements * 4) {
            throw new InvalidShapeException("out holds " + out.byteSize() + " bytes; expected fp32 [" + batch.size()
                    + "][" + queryHeads + "][" + d + "] = " + elements * 4);
        }
        if (out.isReadOnly()) {
            throw new IllegalArgumentException("out is read-only");
        }
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment q16 = Fp16Check.toFiniteFp16Queries(arena, queries, queryType, queryHeads, d);
            synchronized (storage) {
                if (closed) {
                    throw new IllegalStateException("managed decode attention is closed");
                }
                storage.checkOpen();
                List<DecodePlan.Entry> entries = new ArrayList<>(batch.size());
                for (int b = 0; b < batch.size(); b++) {
                    entries.add(ManagedTables.entry(b, batch.get(b), storage::locate));
                }
                run(entries, bits, kvh, d, queryHeads, q16, out);
            }
        }
    }

    /** Checks one view against the batch's shape and what the kernels handle; returns the batch's bit width so far. */
    private static int checkView(int b, LayerKvView v, int kvh, int d, int bits) {
        String what = "sequence " + b + " of the batch";
        if (v.kvHeads() != kvh || v.headDim() != d) {
            throw new InvalidShapeException(what + " is " + v.kvHeads() + "×" + v.headDim() + "; sequence 0 is " + kvh
                    + "×" + d);
        }
        if (v.dtype() != DType.FP16) {
            throw new IllegalArgumentException(what + ": the GPU kernels read fp16 caches; this one is " + v.dtype());
        }
        long fullBytes = 2L * kvh * v.fullCapacity() * d;
        if (v.fullTokens() < 0 || v.fullTokens() > v.fullCapacity() || v.fullKeys().byteSize() != fullBytes
                || v.fullValues().byteSize() != fullBytes) {
            throw new InvalidShapeException(what + ": " + v.fullTokens() + " full-precision tokens of capacity "
                    + v.fullCapacity() + " in key and value blocks of " + v.fullKeys().byteSize() + " and "
                    + v.fullValues().byteSize() + " bytes; expected " + fullBytes + " each");
        }
        for (QuantizedSpan q : v.visualSpans()) {
            if (q.keyGranularity() != Granularity.PER_CHANNEL || q.valueGranularity() != Granularity.PER_CHANNEL) {
                throw new IllegalArgumentException(what + ": the GPU kernels implement per-channel statistics, not "
                        + q.keyGranularity() + "/" + q.valueGranularity());
            }
            if (q.bits() != 1 && q.bits() != 2 && q.bits() != 4) {
                throw new IllegalArgumentException(what + ": the GPU decode kernels handle 1, 2 and 4 bits, not "
                        + q.bits());
            }
            if (bits != 0 && q.bits() != bits) {
                throw new IllegalArgumentException("the batch mixes " + bits + "- and " + q.bits() + "-bit spans");
            }
            bits = q.bits();
            long codeBytes = (long) kvh * q.tokens() * d * bits / 8;
            if (q.kvHeads() != kvh || q.headDim() != d || q.tokens() <= 0 || q.keyCodes().byteSize() != codeBytes
                    || q.valueCodes().byteSize() != codeBytes) {
                throw new InvalidShapeException(what + ": a span of " + q.tokens() + " tokens, " + q.kvHeads() + "×"
                        + q.headDim() + ", has codes of " + q.keyCodes().byteSize() + " and "
                        + q.valueCodes().byteSize() + " bytes; expected " + codeBytes);
            }
        }
        return bits;
    }

    /** Plans, uploads, launches and downloads one step; caller holds the storage's lock. */
    private void run(List<DecodePlan.Entry> entries, int bits, int kvh, int d, int queryHeads, MemorySegment q16,
            MemorySegment out) {
        boolean quantized = bits != 0;
        CalibQuantKernels k = kernelsFor(d, quantized ? bits : 1);
        int group = queryHeads / kvh;
        if (group > k.maxGroup()) {
            throw new InvalidShapeException("GQA group of " + group + " query heads per KV head; the kernels handle up to "
                    + k.maxGroup());
        }
        int perSm = quantized ? k.decodeProgramsPerSm(group) : CalibQuantKernels.FOUR_WARP_PROGRAMS_PER_SM;
        DecodePlan plan = DecodePlan.build(entries, queryHeads, d, kvh, quantized && calibration.enabled(),
                perSm * multiprocessors, k.decodeBlock(), quantized ? k.decodeMaxChunk(group) : 0,
                quantized ? DecodePlan.OneLaunch.of(k, group) : DecodePlan.OneLaunch.NONE);
        CudaStream stream = storage.stream();
        PinnedHostBuffer hostOut;
        try {
            DecodePlan.TableLayout at = plan.tableLayout();
            PinnedHostBuffer hostTables = scratch.pinned("tables", at.bytes());
            plan.writeTables(hostTables.segment(), at);
            DeviceBuffer tables = scratch.device("tables", at.bytes());
            tables.copyFromAsync(hostTables, 0, 0, at.bytes(), stream);

            PinnedHostBuffer hostQ = scratch.pinned("queries", q16.byteSize());
            MemorySegment.copy(q16, 0, hostQ.segment(), 0, q16.byteSize());
            DeviceBuffer q = scratch.device("queries", q16.byteSize());
            q.copyFromAsync(hostQ, 0, 0, q16.byteSize(), stream);

            DeviceBuffer o = scratch.device("outputs", out.byteSize());
            if (poisonOutputs) {
                PinnedHostBuffer nan = scratch.pinned("poison", out.byteSize());
                nan.segment().asSlice(0, out.byteSize()).fill((byte) 0xff); // 0xffffffff is a NaN
                o.copyFromAsync(nan, 0, 0, out.byteSize(), stream);
            }
            int items = plan.workItems();
            DeviceBuffer partMl = scratch.device("partial m, l", 4L * 2 * items * queryHeads);
            DeviceBuffer partAcc = scratch.device("partial outputs", 4L * items * queryHeads * d);
            long counterBytes = 4L * plan.sequences() * kvh;
            DeviceBuffer counters = scratch.device("counters", counterBytes);
            counters.fillAsync((byte) 0, 0, counterBytes, stream); // the kernels need them zero, in stream order
            DeviceBuffer mmBuf = scratch.minmax(plan, kvh, queryHeads);

            long scaleBytes = ManagedTables.scaleBytes(kvh, d);
            DevicePointer keys = new DevicePointer(storage.plane(0), 0);
            DevicePointer values = new DevicePointer(storage.plane(1), 0);
            CachePointers cache = new CachePointers(keys, values, keys, values, keys,
                    new DevicePointer(storage.plane(0), scaleBytes), values,
                    new DevicePointer(storage.plane(1), scaleBytes));
            float smScale = (float) (1.0 / Math.sqrt(d));
            try (Nvtx.Range r = Nvtx.range(stepRange)) {
                if (!quantized) {
                    k.fp16Decode(q, cache, tables, at.seqOffset(), at.workOffset(), partMl, partAcc, counters, o, items,
                            kvh, group, smScale, stream);
                } else {
                    if (plan.mmMode() == 1) {
                        k.minmax(q, cache, tables, at.seqOffset(), at.spanOffset(), at.mmOffset(), mmBuf,
                                plan.minmaxChunks(), kvh, group, smScale, stream);
                    }
                    k.decode(plan.mmMode(), q, cache, tables, at.seqOffset(), at.spanOffset(), at.workOffset(), mmBuf,
                            partMl, partAcc, counters, o, items, kvh, group, smScale, calibration.tauMin(),
                            calibration.tauMax(), calibration.policy() == CalibrationPolicy.CLAMP_AT_ZERO, stream);
                }
            }
            hostOut = scratch.pinned("outputs", out.byteSize());
            o.copyToAsync(0, hostOut, 0, out.byteSize(), stream);
        } catch (RuntimeException | Error e) {
            // Copies queued before the failure may still read the pinned tables, queries and poison (or write the
            // pinned outputs): the next step rewrites those buffers, and growing or closing the scratch frees them.
            stream.synchronizeAfter(e);
            throw e;
        }
        stream.synchronize();
        lastPlan = plan;
        MemorySegment result = hostOut.segment();
        long n = out.byteSize() / 4;
        for (long i = 0; i < n; i++) {
            float v = result.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            if (!Float.isFinite(v)) {
                long row = i / d;
                throw new NonFiniteResultException((int) (row / queryHeads), (int) (row % queryHeads), (int) (i % d), v);
            }
        }
        MemorySegment.copy(result, 0, out, 0, out.byteSize());
    }

    private CalibQuantKernels kernelsFor(int headDim, int bits) {
        return kernels.computeIfAbsent(headDim * 16 + bits, key -> new CalibQuantKernels(catalog, headDim, bits));
    }

    /** Frees this attention's scratch buffers (not the storage, not the kernels). Idempotent. */
    @Override
    public void close() {
        synchronized (storage) {
            if (closed) {
                return;
            }
            closed = true;
            scratch.close();
        }
    }
}
