package dev.calibquant.gpu;

import dev.calibquant.kernels.DecodePlan;

import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.attention.NonFiniteResultException;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cuda.CudaStream;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.cuda.PinnedHostBuffer;
import dev.calibquant.kernels.CalibQuantKernels;
import dev.calibquant.kernels.CalibQuantKernels.CachePointers;
import dev.calibquant.profiling.Nvtx;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.CalibrationPolicy;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

/**
 * Decode attention on the GPU over the sequences of a {@link DeviceKvCache}, read in place by the CalibQuant kernels
 * (CalibQuant decode when the batch has quantized spans, flash-decoding over full-precision tokens when it has
 * none). Obtained from {@link DeviceKvCache#attention}, which owns it: it holds scratch buffers (step tables,
 * partial results) until it or its cache closes.
 *
 * <p><b>What a step moves.</b> {@link #decode(int, List, MemorySegment, DType, int, MemorySegment)} uploads the
 * queries and the step's index tables in one host-to-device copy (through pinned memory), launches one kernel (two
 * for a calibrated 2- or 4-bit step over spans longer than one work item), and downloads the output in one
 * device-to-host copy; the cache itself is not copied. {@link #prepare} builds a step whose tables stay on the
 * device, for a caller that keeps queries and outputs in device memory (and may capture the launch in a CUDA graph).
 *
 * <p><b>Inputs.</b> The kernels read fp16 queries: queries of another {@link DType} are rounded to fp16 (to nearest
 * even) before the step, so the GPU computes on {@code round16(q)}, not {@code q}. The CPU path computes on the
 * queries as given; to compare the two, give both the same fp16 queries (see {@link #queryType()}).
 *
 * <p><b>Takes</b> fp16 caches whose spans are quantized per channel at 1, 2 or 4 bits, head dim 64 or 128, up to the
 * kernels' group size ({@link DeviceKvCache#unsupportedReason}); other batches are refused with a message naming
 * what is unsupported (the CPU path runs them on a {@link DeviceKvCache#download downloaded} layer).
 *
 * <p><b>Threads.</b> Thread-safe: every step runs under its storage's lock, on the storage's stream, so steps from
 * several threads are serialized.
 */
public final class DeviceDecodeAttention implements DecodeAttention, AutoCloseable {
    private final DeviceStorage storage;
    private final ModelGeometry geometry;
    private final Calibration calibration;
    private final int multiprocessors;
    private final Nvtx.Name stepRange = Nvtx.rangeName(Nvtx.DECODE_STEP);
    // guarded by the storage's lock
    private final Staging scratch;
    private final List<PreparedStep> prepared = new ArrayList<>();
    private boolean oneLaunch = true;
    /** A failed launch may leave the step counters non-zero: zero them before the next. */
    private boolean rezeroCounters;
    private DecodeStepInfo lastStep;
    private boolean poisonOutputs;
    private boolean closed;

    DeviceDecodeAttention(DeviceStorage storage, ModelGeometry geometry, Calibration calibration) {
        this.storage = Objects.requireNonNull(storage, "storage");
        this.geometry = Objects.requireNonNull(geometry, "geometry");
        this.calibration = Objects.requireNonNull(calibration, "calibration");
        this.multiprocessors = storage.context().device().properties().multiprocessors();
        this.scratch = new Staging(storage.context());
    }

    /** How this attention calibrates visual scores. */
    public Calibration calibration() {
        return calibration;
    }

    /** The query precision the kernels compute on: queries of another type are rounded to it first. */
    public DType queryType() {
        return DType.FP16;
    }

    /** Fill the device output with NaN before every launch, so a kernel that skips an element cannot go unseen. */
    public void poisonOutputs(boolean on) {
        synchronized (storage) {
            poisonOutputs = on;
        }
    }

    /**
     * Whether calibrated steps may use the one-launch kernel (mode 3) where it ships; on by default. Off, they use
     * modes 1 and 2 (the regression suite checks those variants this way).
     */
    public void oneLaunchCalibration(boolean on) {
        synchronized (storage) {
            oneLaunch = on;
        }
    }

    /** What the last step launched (work items, calibration mode, token block), or {@code null} before any. */
    public DecodeStepInfo lastStep() {
        synchronized (storage) {
            return lastStep;
        }
    }

    /**
     * One decode step of {@code layer} over {@code batch}: queries {@code [batch][queryHeads][headDim]} of
     * {@code queryType}, output fp32 of the same shape, written only on success. Takes each sequence's view itself,
     * holding every sequence's lock (in id order) until the output is written, so no append or close moves a block
     * meanwhile.
     *
     * @throws InvalidShapeException when a size disagrees with the batch
     * @throws dev.calibquant.quant.NonFiniteInputException for a NaN or infinite query (or one that fp16 cannot hold)
     * @throws NonFiniteResultException when the output holds a NaN or infinity
     * @throws IllegalArgumentException when the batch is empty or names a sequence twice, or the kernels do not
     *     handle its layout
     */
    public void decode(int layer, List<Sequence> batch, MemorySegment queries, DType queryType, int queryHeads,
            MemorySegment out) {
        withViews(layer, batch, views -> {
            decode(views, queries, queryType, queryHeads, out);
            return null;
        });
    }

    /**
     * A decode step of {@code layer} over {@code batch} with its index tables and scratch on the device: launch it
     * with {@link PreparedStep#launch} on queries and outputs that live on the device. It reads the sequences as they
     * are now; it refuses to launch once one of their full-precision blocks was written or freed (an append), so
     * prepare again after appending. Closed with this attention, or by {@link PreparedStep#close}.
     */
    public PreparedStep prepare(int layer, List<Sequence> batch) {
        return withViews(layer, batch, views -> {
            Shape checked = check(views);
            if (checked.kvHeads() != geometry.kvHeads()) {
                throw new InvalidShapeException("the batch has " + checked.kvHeads() + " KV heads; the cache's geometry "
                        + geometry.kvHeads());
            }
            Shape shape = new Shape(checked.kvHeads(), checked.headDim(), geometry.groupSize(), checked.bits());
            synchronized (storage) {
                checkOpen();
                Planned p = plan(views, shape, geometry.queryHeads());
                List<MemorySegment> full = new ArrayList<>(2 * views.size());
                for (LayerKvView v : views) { // appends write these blocks, growth and close free them
                    full.add(v.fullKeys());
                    full.add(v.fullValues());
                }
                PreparedStep step = new PreparedStep(p, shape, storage.watch(full));
                prepared.add(step);
                return step;
            }
        });
    }

    /** Runs {@code action} on the batch's views of {@code layer} while holding every sequence's lock, in id order. */
    private <T> T withViews(int layer, List<Sequence> batch, java.util.function.Function<List<LayerKvView>, T> action) {
        Objects.requireNonNull(batch, "batch");
        // Sequence's methods lock the sequence, then the storage: the same order here
        return Sequence.holdingLocks(batch, () -> {
            List<LayerKvView> views = new ArrayList<>(batch.size());
            for (Sequence s : batch) {
                views.add(s.layer(layer));
            }
            return action.apply(views);
        });
    }

    /** The batch's shape as the kernels see it. */
    private record Shape(int kvHeads, int headDim, int group, int bits) {}

    @Override
    public void decode(List<? extends LayerKvView> batch, MemorySegment queries, DType queryType, int queryHeads,
            MemorySegment out) {
        Objects.requireNonNull(batch, "batch");
        Objects.requireNonNull(queries, "queries");
        Objects.requireNonNull(queryType, "queryType");
        Objects.requireNonNull(out, "out");
        Shape shape = check(batch);
        int kvh = shape.kvHeads();
        int d = shape.headDim();
        if (queryHeads <= 0 || queryHeads % kvh != 0) {
            throw new InvalidShapeException(queryHeads + " query heads is not a positive multiple of " + kvh
                    + " KV heads");
        }
        shape = new Shape(kvh, d, queryHeads / kvh, shape.bits());
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
        synchronized (storage) {
            checkOpen();
            Planned p = plan(batch, shape, queryHeads);
            run(p, shape, queryHeads, queries, queryType, out);
        }
    }

    /** Checks the views against each other and what the kernels handle; the group is filled in by the caller. */
    private static Shape check(List<? extends LayerKvView> batch) {
        if (batch.isEmpty()) {
            throw new InvalidShapeException("decode of an empty batch");
        }
        LayerKvView first = Objects.requireNonNull(batch.getFirst(), "sequence 0");
        int kvh = first.kvHeads();
        int d = first.headDim();
        if (!DeviceKvCache.kernelsTakeHeadDim(d)) {
            throw new InvalidShapeException("the GPU kernels are compiled for head dim 64 and 128, not " + d);
        }
        int bits = 0;
        for (int b = 0; b < batch.size(); b++) {
            bits = checkView(b, Objects.requireNonNull(batch.get(b), "sequence " + b), kvh, d, bits);
        }
        return new Shape(kvh, d, 0, bits);
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
            java.util.Optional<String> unsupported = DeviceKvCache.unsupportedSpans(q.bits(), q.valueBits(),
                    q.keyGranularity(), q.valueGranularity(), q.paramType(),
                    q.wideKeys() == null ? 0 : q.wideKeys().channels());
            if (unsupported.isPresent()) {
                throw new IllegalArgumentException(what + ": " + unsupported.get());
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

    /** A step's plan and its kernels. */
    private record Planned(DecodePlan plan, CalibQuantKernels kernels) {}

    /** Plans a step over {@code views}; caller holds the storage's lock. */
    @SuppressWarnings("try") // an NVTX range opened for its scope, never read
    private Planned plan(List<? extends LayerKvView> views, Shape shape, int queryHeads) {
        int kvh = shape.kvHeads();
        int group = queryHeads / kvh;
        List<DecodePlan.Entry> entries = new ArrayList<>(views.size());
        for (int b = 0; b < views.size(); b++) {
            entries.add(ManagedTables.entry(b, views.get(b), storage::locate));
        }
        boolean quantized = shape.bits() != 0;
        CalibQuantKernels k = storage.kernels(shape.headDim(), quantized ? shape.bits() : 1);
        if (group > k.maxGroup()) {
            throw new InvalidShapeException("GQA group of " + group + " query heads per KV head; the kernels handle up to "
                    + k.maxGroup());
        }
        int perSm = quantized ? k.decodeProgramsPerSm(group) : CalibQuantKernels.FOUR_WARP_PROGRAMS_PER_SM;
        DecodePlan plan = DecodePlan.build(entries, queryHeads, shape.headDim(), kvh,
                quantized && calibration.enabled(), perSm * multiprocessors, k.decodeBlock(),
                quantized ? k.decodeMaxChunk(group) : 0,
                quantized && oneLaunch ? DecodePlan.OneLaunch.of(k, group) : DecodePlan.OneLaunch.NONE);
        return new Planned(plan, k);
    }

    /** The per-step device buffers a launch reads and writes besides the cache, queries and output. */
    private record StepBuffers(DeviceBuffer tables, long tableBase, DecodePlan.TableLayout layout,
            DeviceBuffer partMl, DeviceBuffer partAcc, DeviceBuffer counters, DeviceBuffer mmBuf) {}

    /** Queues the step's kernels on {@code stream}. */
    @SuppressWarnings("try") // an NVTX range opened for its scope, never read
    private void launch(Planned p, Shape shape, int queryHeads, StepBuffers b, DeviceBuffer q, DeviceBuffer o,
            CudaStream stream) {
        DecodePlan plan = p.plan();
        CalibQuantKernels k = p.kernels();
        int kvh = shape.kvHeads();
        int group = queryHeads / kvh;
        DecodePlan.TableLayout at = b.layout();
        long seq = b.tableBase() + at.seqOffset();
        long span = b.tableBase() + at.spanOffset();
        long work = b.tableBase() + at.workOffset();
        CachePointers cache = storage.cachePointers(ManagedTables.scaleBytes(kvh, shape.headDim()));
        float smScale = (float) (1.0 / Math.sqrt(shape.headDim()));
        try (Nvtx.Range r = Nvtx.range(stepRange)) {
            if (shape.bits() == 0) {
                k.fp16Decode(q, cache, b.tables(), seq, work, b.partMl(), b.partAcc(), b.counters(), o,
                        plan.workItems(), kvh, group, smScale, stream);
                return;
            }
            if (plan.mmMode() == 1) {
                k.minmax(q, cache, b.tables(), seq, span, b.tableBase() + at.mmOffset(), b.mmBuf(),
                        plan.minmaxChunks(), kvh, group, smScale, stream);
            }
            k.decode(plan.mmMode(), q, cache, b.tables(), seq, span, work, b.mmBuf(),
                    b.partMl(), b.partAcc(), b.counters(), o, plan.workItems(), kvh, group, smScale,
                    calibration.tauMin(), calibration.tauMax(), calibration.policy() == CalibrationPolicy.CLAMP_AT_ZERO,
                    stream);
        }
    }

    /**
     * Uploads, launches and downloads one step; caller holds the storage's lock. Four driver calls: one upload
     * (queries rounded to fp16, then the tables), the launch, one download, the wait. The queries are checked (and
     * rounded) into the pinned upload buffer before anything is queued.
     */
    private void run(Planned p, Shape shape, int queryHeads, MemorySegment queries, DType queryType,
            MemorySegment out) {
        DecodePlan plan = p.plan();
        int kvh = shape.kvHeads();
        int d = shape.headDim();
        CudaStream stream = storage.stream();
        long qBytes = 2 * (queries.byteSize() / queryType.byteSize());
        DecodePlan.TableLayout at = plan.tableLayout();
        long tableBase = Math.ceilDiv(qBytes, DecodePlan.TABLE_ALIGN) * DecodePlan.TABLE_ALIGN;
        long upBytes = tableBase + at.bytes();
        PinnedHostBuffer up = scratch.pinned("step upload", upBytes);
        // the previous step waited for its stream, so the pinned buffers are free to rewrite
        Fp16Check.writeFiniteFp16Queries(queries, queryType, queryHeads, d, up.segment());
        plan.writeTables(up.segment().asSlice(tableBase), at);
        PinnedHostBuffer hostOut;
        try {
            DeviceBuffer upload = scratch.device("step upload", upBytes);
            upload.copyFromAsync(up, 0, 0, upBytes, stream);
            DeviceBuffer o = scratch.device("outputs", out.byteSize());
            if (poisonOutputs) {
                o.fillAsync((byte) 0xff, 0, out.byteSize(), stream); // 0xffffffff is a NaN
            }
            int items = plan.workItems();
            long counterBytes = 4L * plan.sequences() * kvh;
            DeviceBuffer counters = scratch.deviceZeroed("counters", counterBytes); // every launch leaves them zero
            if (rezeroCounters) {
                counters.fillAsync((byte) 0, 0, counters.byteSize(), stream);
            }
            StepBuffers buffers = new StepBuffers(upload, tableBase, at,
                    scratch.device("partial m, l", 4L * 2 * items * queryHeads),
                    scratch.device("partial outputs", 4L * items * queryHeads * d), counters,
                    scratch.minmax(plan, kvh, queryHeads));
            rezeroCounters = true; // until this launch is queued
            launch(p, shape, queryHeads, buffers, upload, o, stream);
            rezeroCounters = false;
            hostOut = scratch.pinned("outputs", out.byteSize());
            o.copyToAsync(0, hostOut, 0, out.byteSize(), stream);
        } catch (RuntimeException | Error e) {
            // Copies queued before the failure may still read the pinned upload (or write the pinned outputs): the
            // next step rewrites those buffers, and growing or closing the scratch frees them.
            stream.synchronizeAfter(e);
            throw e;
        }
        stream.synchronize();
        lastStep = new DecodeStepInfo(plan.sequences(), plan.workItems(), plan.mmMode(), p.kernels().decodeBlock());
        MemorySegment result = hostOut.segment();
        long bad = Fp16Check.firstNonFiniteFp32(result, out.byteSize() / 4);
        if (bad >= 0) {
            long row = bad / d;
            throw new NonFiniteResultException((int) (row / queryHeads), (int) (row % queryHeads), (int) (bad % d),
                    result.getAtIndex(ValueLayout.JAVA_FLOAT, bad));
        }
        MemorySegment.copy(result, 0, out, 0, out.byteSize());
    }

    /**
     * A decode step whose tables and scratch stay on the device (from {@link #prepare}); owns those buffers until
     * closed. Launch it as often as needed while its sequences do not change: each launch checks that (and refuses
     * a stale step), but a launch replayed from a CUDA graph is not checked.
     */
    public final class PreparedStep implements AutoCloseable {
        private final Planned planned;
        private final DeviceStorage.Watch blocks;
        private final Shape shape;
        private final StepBuffers buffers;
        private boolean rezero;
        private boolean open = true;

        private PreparedStep(Planned planned, Shape shape, DeviceStorage.Watch blocks) {
            this.planned = planned;
            this.blocks = blocks;
            this.shape = shape;
            DecodePlan plan = planned.plan();
            int queryHeads = shape.kvHeads() * shape.group();
            DecodePlan.TableLayout at = plan.tableLayout();
            List<DeviceBuffer> made = new ArrayList<>();
            try (Arena arena = Arena.ofConfined()) {
                var ctx = storage.context();
                DeviceBuffer tables = add(made, ctx.allocate(at.bytes()));
                MemorySegment host = arena.allocate(at.bytes(), 16);
                plan.writeTables(host, at);
                tables.copyFrom(host);
                int items = plan.workItems();
                DeviceBuffer counters = add(made, ctx.allocate(Math.max(4, 4L * plan.sequences() * shape.kvHeads())));
                counters.fill((byte) 0);
                DeviceBuffer mm = add(made, ctx.allocate(Math.max(4, plan.minmaxBufferBytes(shape.kvHeads(),
                        queryHeads))));
                mm.fill((byte) 0); // mode 3's rendezvous slots start zero; every launch leaves them zero
                this.buffers = new StepBuffers(tables, 0, at, add(made, ctx.allocate(Math.max(4, 8L * items * queryHeads))),
                        add(made, ctx.allocate(Math.max(4, 4L * items * queryHeads * shape.headDim()))), counters, mm);
            } catch (RuntimeException | Error e) {
                for (DeviceBuffer b : made) {
                    try {
                        b.close();
                    } catch (RuntimeException suppressed) {
                        e.addSuppressed(suppressed);
                    }
                }
                throw e;
            }
        }

        private static DeviceBuffer add(List<DeviceBuffer> made, DeviceBuffer b) {
            made.add(b);
            return b;
        }

        /** What this step launches. */
        public DecodeStepInfo info() {
            DecodePlan p = planned.plan();
            return new DecodeStepInfo(p.sequences(), p.workItems(), p.mmMode(), planned.kernels().decodeBlock());
        }

        /**
         * Queues the step on {@code stream}: {@code queries} fp16 {@code [B][queryHeads][headDim]}, {@code out} fp32 of
         * the same shape, both device buffers of the cache's context. Returns once queued.
         *
         * @throws IllegalStateException when this step, its attention or its storage is closed, or one of its
         *     sequences was appended to, grown or closed since it was prepared
         */
        public void launch(DeviceBuffer queries, DeviceBuffer out, CudaStream stream) {
            Objects.requireNonNull(queries, "queries");
            Objects.requireNonNull(out, "out");
            Objects.requireNonNull(stream, "stream");
            int queryHeads = shape.kvHeads() * shape.group();
            long rows = (long) planned.plan().sequences() * queryHeads * shape.headDim();
            if (queries.byteSize() < 2 * rows || out.byteSize() < 4 * rows) {
                throw new InvalidShapeException("queries need " + 2 * rows + " bytes and outputs " + 4 * rows
                        + "; given " + queries.byteSize() + " and " + out.byteSize());
            }
            synchronized (storage) {
                if (!open) {
                    throw new IllegalStateException("prepared decode step is closed");
                }
                checkOpen();
                if (!blocks.unchanged()) {
                    throw new IllegalStateException("a sequence of this prepared step was appended to, grown or "
                            + "closed since it was prepared: prepare the step again");
                }
                if (rezero) {
                    buffers.counters().fillAsync((byte) 0, 0, buffers.counters().byteSize(), stream);
                }
                if (poisonOutputs) {
                    out.fillAsync((byte) 0xff, 0, 4 * rows, stream);
                }
                try {
                    DeviceDecodeAttention.this.launch(planned, shape, queryHeads, buffers, queries, out, stream);
                    rezero = false;
                } catch (RuntimeException | Error e) {
                    rezero = true; // a failed launch may leave counters non-zero
                    throw e;
                }
            }
        }

        /** Frees the step's device buffers (after the storage's stream and the context finish using them). */
        @Override
        public void close() {
            synchronized (storage) {
                if (!open) {
                    return;
                }
                open = false;
                prepared.remove(this);
            }
            freeBuffers();
        }

        private void freeBuffers() {
            Closer closer = new Closer();
            for (DeviceBuffer b : new DeviceBuffer[] {buffers.tables(), buffers.counters(), buffers.mmBuf(),
                    buffers.partMl(), buffers.partAcc()}) {
                closer.close(b);
            }
            closer.rethrow();
        }
    }

    private void checkOpen() {
        if (closed) {
            throw new IllegalStateException("device decode attention is closed");
        }
        storage.checkOpen();
    }

    /** Frees this attention's scratch buffers and its prepared steps (not the cache). Idempotent. */
    @Override
    public void close() {
        List<PreparedStep> steps;
        synchronized (storage) {
            if (closed) {
                return;
            }
            closed = true;
            steps = new ArrayList<>(prepared);
            prepared.clear();
        }
        Closer closer = new Closer();
        closer.close(storage.stream()::synchronize); // queued launches may still read the buffers freed below
        for (PreparedStep step : steps) {
            step.open = false;
            closer.close(step::freeBuffers);
        }
        closer.close(scratch);
        closer.rethrow();
    }
}
