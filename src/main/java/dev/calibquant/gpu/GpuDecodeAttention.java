package dev.calibquant.gpu;

import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.CudaStream;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.cuda.PinnedHostBuffer;
import dev.calibquant.kernels.CalibQuantKernels;
import dev.calibquant.kernels.CalibQuantKernels.CachePointers;
import dev.calibquant.profiling.Nvtx;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.QuantConfig;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * Decode attention over a {@link GpuKvCache} on the GPU: CalibQuant (post-scaling, calibration, one softmax over
 * all segments) for a quantized cache, flash-decoding for an fp16 cache. One step is one kernel launch on the
 * cache's stream, whatever the batch (two where a calibrated step cannot use the one-launch kernel: 2 and 4 bits with
 * spans longer than one work item, or {@link #oneLaunchCalibration} off).
 *
 * <p>{@link #decode} takes host queries and returns host outputs; {@link #prepare} builds a step whose tables stay
 * on the device, for callers that keep queries and outputs on the GPU (and for timing the kernels alone).
 * Not thread-safe on its own: it uses its cache's lock.
 */
public final class GpuDecodeAttention implements AutoCloseable {
    private final GpuKvCache cache;
    private final CudaContext context;
    private final int multiprocessors;
    private final Staging scratch;
    private final Nvtx.Name stepRange = Nvtx.rangeName(Nvtx.DECODE_STEP);
    private boolean poisonOutputs;

    public GpuDecodeAttention(GpuKvCache cache) {
        this.cache = cache;
        this.context = cache.context();
        this.multiprocessors = context.device().properties().multiprocessors();
        this.scratch = new Staging(context);
    }

    /**
     * Whether calibrated steps may use the one-launch kernel (mode 3) where it ships; on by default. Off, they use
     * modes 1 and 2 as before it existed (the regression suite checks those variants this way).
     */
    public void oneLaunchCalibration(boolean on) {
        this.oneLaunch = on;
    }

    private boolean oneLaunch = true;

    /** Fill the device output with NaN before every launch, so a kernel that skips an element cannot go unseen. */
    public void poisonOutputs(boolean on) {
        this.poisonOutputs = on;
    }

    /**
     * A decode step whose index tables are on the device. Valid until the next {@link #prepare} of this attention
     * (which reuses, or replaces, the table buffer: a replaced one fails fast as closed) and while the batch's
     * sequences do not change.
     */
    public final class PreparedStep {
        private final DecodePlan plan;
        private final DeviceBuffer tables;
        private final long seqOff;
        private final long spanOff;
        private final long workOff;
        private final long mmOff;

        private PreparedStep(DecodePlan plan, DeviceBuffer tables, long seqOff, long spanOff, long workOff, long mmOff) {
            this.plan = plan;
            this.tables = tables;
            this.seqOff = seqOff;
            this.spanOff = spanOff;
            this.workOff = workOff;
            this.mmOff = mmOff;
        }

        public int sequences() {
            return plan.sequences();
        }

        public int workItems() {
            return plan.workItems();
        }

        /**
         * 0: no calibration, 1: a min/max pass first, 2: min/max found inside each whole-span item, 3: one launch,
         * the items of a span meet at a rendezvous.
         */
        public int calibrationMode() {
            return plan.mmMode();
        }

        /** Queues the step: {@code q} fp16 {@code [B][Hq][D]}, {@code out} fp32 {@code [B][Hq][D]}. */
        public void launch(DeviceBuffer q, DeviceBuffer out, CudaStream stream) {
            try (Nvtx.Range r = Nvtx.range(stepRange)) {
                queue(q, out, stream);
            }
        }

        private void queue(DeviceBuffer q, DeviceBuffer out, CudaStream stream) {
            ModelGeometry g = cache.geometry();
            long rows = (long) plan.sequences() * g.queryHeads();
            if (q.byteSize() < rows * g.headDim() * 2 || out.byteSize() < rows * g.headDim() * 4) {
                throw new InvalidShapeException("queries need " + rows * g.headDim() * 2 + " bytes and outputs "
                        + rows * g.headDim() * 4 + "; given " + q.byteSize() + " and " + out.byteSize());
            }
            CalibQuantKernels k = cache.kernels();
            int kvh = g.kvHeads();
            int group = g.groupSize();
            float smScale = (float) (1.0 / Math.sqrt(g.headDim()));
            DeviceBuffer partMl = scratch.device("partial m, l", 4L * 2 * plan.workItems() * g.queryHeads());
            DeviceBuffer partAcc = scratch.device("partial outputs", 4L * plan.workItems() * g.queryHeads() * g.headDim());
            DeviceBuffer counters = scratch.deviceZeroed("counters", 4L * plan.sequences() * kvh);
            DeviceBuffer mmBuf = scratch.minmax(plan, kvh, g.queryHeads());
            if (poisonOutputs) {
                out.fill32(Float.floatToRawIntBits(Float.NaN), 0, rows * g.headDim());
            }
            ParallelPool full = cache.fullPool();
            ParallelPool codes = cache.codePool();
            ParallelPool scales = cache.scalePool();
            CachePointers pointers = CachePointers.atStart(full.buffer(0), full.buffer(1), codes.buffer(0),
                    codes.buffer(1), scales.buffer(0), scales.buffer(1), scales.buffer(2), scales.buffer(3));
            QuantConfig c = cache.config();
            if (c == null) {
                k.fp16Decode(q, pointers, tables, seqOff, workOff, partMl, partAcc, counters, out, plan.workItems(),
                        kvh, group, smScale, stream);
                return;
            }
            if (plan.mmMode() == 1) {
                k.minmax(q, pointers, tables, seqOff, spanOff, mmOff, mmBuf, plan.minmaxChunks(), kvh, group, smScale,
                        stream);
            }
            k.decode(plan.mmMode(), q, pointers, tables, seqOff, spanOff, workOff, mmBuf, partMl, partAcc, counters,
                    out, plan.workItems(), kvh, group, smScale, c.tauMin(), c.tauMax(),
                    c.policy() == dev.calibquant.quant.CalibrationPolicy.CLAMP_AT_ZERO, stream);
        }
    }

    /** Plans the step for {@code layer} of {@code batch} and uploads its tables; invalidates the previous step. */
    public PreparedStep prepare(int layer, List<GpuSequence> batch) {
        synchronized (cache) {
            if (batch.isEmpty()) {
                throw new IllegalArgumentException("decode of an empty batch");
            }
            if (batch.stream().distinct().count() != batch.size()) {
                throw new IllegalArgumentException("a sequence appears twice in the batch");
            }
            List<DecodePlan.Entry> entries = new ArrayList<>(batch.size());
            for (GpuSequence s : batch) {
                cache.checkSequence(s, layer);
                if (!s.filled[layer]) {
                    throw new IllegalStateException(s + " layer " + layer + " is not filled yet");
                }
                entries.add(new DecodePlan.Entry(s.fullOffset[layer], s.fullLength[layer], s.fullCapacity(),
                        s.quantizedSpans(), s.codeOffset[layer], s.scaleOffset[layer]));
            }
            ModelGeometry g = cache.geometry();
            QuantConfig c = cache.config();
            CalibQuantKernels k = cache.kernels();
            int group = g.groupSize();
            boolean quantized = c != null;
            int perSm = quantized ? k.decodeProgramsPerSm(group) : CalibQuantKernels.FOUR_WARP_PROGRAMS_PER_SM;
            DecodePlan plan = DecodePlan.build(entries, g.queryHeads(), g.headDim(), g.kvHeads(),
                    quantized && c.calibrate(), perSm * multiprocessors, k.decodeBlock(),
                    quantized ? k.decodeMaxChunk(group) : 0,
                    quantized && oneLaunch ? DecodePlan.OneLaunch.of(k, group) : DecodePlan.OneLaunch.NONE);
            DecodePlan.TableLayout at = plan.tableLayout();
            PinnedHostBuffer host = scratch.pinned("tables", at.bytes());
            plan.writeTables(host.segment(), at);
            DeviceBuffer tables = scratch.device("tables", at.bytes());
            tables.copyFromAsync(host, 0, 0, at.bytes(), cache.stream());
            cache.stream().synchronize(); // the pinned tables are reused by the next prepare
            return new PreparedStep(plan, tables, at.seqOffset(), at.spanOffset(), at.workOffset(), at.mmOffset());
        }
    }

    /**
     * One decode step for {@code layer}: {@code queries} fp16 {@code [batch][queryHeads][headDim]} (post-RoPE),
     * {@code out} fp32 of the same shape. Checked before anything is launched; {@code out} is written only on success.
     */
    public void decode(int layer, List<GpuSequence> batch, MemorySegment queries, MemorySegment out) {
        ModelGeometry g = cache.geometry();
        long rows = (long) batch.size() * g.queryHeads();
        if (queries.byteSize() != rows * g.headDim() * 2) {
            throw new InvalidShapeException("queries hold " + queries.byteSize() + " bytes; expected fp16 [" + batch.size()
                    + "][" + g.queryHeads() + "][" + g.headDim() + "] = " + rows * g.headDim() * 2);
        }
        if (out.byteSize() != rows * g.headDim() * 4) {
            throw new InvalidShapeException("out holds " + out.byteSize() + " bytes; expected fp32 [" + batch.size()
                    + "][" + g.queryHeads() + "][" + g.headDim() + "] = " + rows * g.headDim() * 4);
        }
        Fp16Check.requireFiniteQueries(queries, batch.size(), g.queryHeads(), g.headDim());
        synchronized (cache) {
            PreparedStep step = prepare(layer, batch);
            DeviceBuffer q = scratch.device("queries", queries.byteSize());
            DeviceBuffer o = scratch.device("outputs", out.byteSize());
            q.copyFrom(queries, 0, 0, queries.byteSize());
            step.launch(q, o, cache.stream());
            cache.stream().synchronize();
            o.copyTo(0, out, 0, out.byteSize());
        }
    }

    @Override
    public void close() {
        scratch.close();
    }
}
