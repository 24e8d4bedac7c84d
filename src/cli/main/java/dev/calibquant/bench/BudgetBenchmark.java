package dev.calibquant.bench;

import dev.calibquant.gpu.DeviceDecodeAttention;
import dev.calibquant.gpu.DeviceKvCache;
import dev.calibquant.selftest.GpuScenario;

import static dev.calibquant.bench.DecodeBenchmark.HEAD_DIM;
import static dev.calibquant.bench.DecodeBenchmark.KV_HEADS;
import static dev.calibquant.bench.DecodeBenchmark.PREFIX;
import static dev.calibquant.bench.DecodeBenchmark.QUERY_HEADS;
import static dev.calibquant.bench.DecodeBenchmark.TOKENS;
import static dev.calibquant.bench.DecodeBenchmark.VISUAL;

import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.MemoryUsage;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.CudaEvent;
import dev.calibquant.cuda.CudaOutOfMemoryException;
import dev.calibquant.cuda.CudaStream;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.kernels.CalibQuantKernels;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

/**
 * Decode throughput at a fixed KV memory budget on the GPU, on the {@link DecodeBenchmark} workload (41 prefix +
 * 3328 visual + 64 text tokens) plus {@code generatedTokens} each sequence reserves, for the fp16 cache and the
 * 1-bit cache (visual tokens at 1 bit in every layer).
 *
 * <p>The bytes of one sequence come from its cache's own accounting ({@link Sequence#usage()}) of one sequence
 * allocated with every layer on this device; {@link KvBudget} turns them into the sequences that fit. One layer's
 * decode step is then timed at that batch size, each sequence holding half its generated tokens (the mean context
 * over the generation), launched from Java, median over repetitions of {@code steps} back-to-back steps (CUDA
 * events). A batch whose step does not fit on the device (or is capped by {@code maxStepBatch}) is timed as equal
 * sub-batches, one after another.
 */
public final class BudgetBenchmark {
    private static final List<TokenSpan> VISUAL_SPANS = List.of(new TokenSpan(PREFIX, PREFIX + VISUAL));

    /**
     * One cache's figures.
     *
     * @param splitReason why the batch was timed in sub-batches; empty when it ran as one step
     * @param subBatchStepUs median time of one layer's step over one sub-batch
     */
    public record PathFigures(KvBudget.Fit fit, KvBudget.Split split, String splitReason, double subBatchStepUs,
            int workItems, int calibrationMode) {
        /** One layer's step over all the fit's sequences. */
        public double layerStepUs() {
            return split.layerStepUs(subBatchStepUs);
        }

        public KvBudget.Throughput throughput() {
            return KvBudget.throughput(fit, layerStepUs());
        }
    }

    /** Both quantized paths at their widths' defaults (per channel, calibrated), beside the fp16 cache. */
    public record Report(String device, String target, long budgetBytes, int layers, int generatedTokens,
            int heldGeneratedTokens, PathFigures fp16, PathFigures oneBit, PathFigures twoBit) {
        /** fp16, 1-bit, 2-bit: the order of the table, the JSON and the CSV. */
        public List<PathFigures> paths() {
            return List.of(fp16, oneBit, twoBit);
        }

        public double sequenceRatio() {
            return sequenceRatio(oneBit);
        }

        /** 1-bit sequences × steps/s over fp16's. */
        public double throughputRatio() {
            return oneBit.throughput().over(fp16.throughput());
        }

        /** {@code path}'s sequences over fp16's. */
        public double sequenceRatio(PathFigures path) {
            return (double) path.fit().sequences() / fp16.fit().sequences();
        }
    }

    private final CudaContext ctx;
    private final KernelCatalog catalog;
    private final int reps;
    private final int steps;
    private final Random random = new Random(20261130);

    private BudgetBenchmark(CudaContext ctx, KernelCatalog catalog, int reps, int steps) {
        this.ctx = ctx;
        this.catalog = catalog;
        this.reps = reps;
        this.steps = steps;
    }

    /**
     * Fits both caches in {@code budgetBytes} over {@code layers} layers, then times each at its batch size.
     *
     * @param maxStepBatch most sequences per timed step, or 0 for no cap (sub-batches only where the device runs out)
     * @throws KvBudgetTooSmallException before anything is timed, when a cache holds no whole sequence
     */
    public static Report run(CudaContext ctx, long budgetBytes, int layers, int generatedTokens, int maxStepBatch,
            int reps, int steps) {
        if (budgetBytes <= 0 || layers <= 0 || generatedTokens < 0 || maxStepBatch < 0 || reps <= 0 || steps <= 0) {
            throw new IllegalArgumentException("budget " + budgetBytes + " bytes, " + layers + " layers, "
                    + generatedTokens + " generated tokens, at most " + maxStepBatch + " per step, " + reps + " reps, "
                    + steps + " steps: budget, layers, reps and steps must be positive, the others not negative");
        }
        KernelCatalog catalog = KernelCatalog.open(ctx);
        try {
            new CalibQuantKernels(catalog, HEAD_DIM, 1).preload();
            new CalibQuantKernels(catalog, HEAD_DIM, 2).preload();
            QuantConfig oneBit = QuantConfig.defaults(1);
            QuantConfig twoBit = QuantConfig.defaults(2);
            KvBudget.Fit fp16Fit = KvBudget.fit("fp16", budgetBytes, layers,
                    sequenceUsage(ctx, null, layers, generatedTokens));
            KvBudget.Fit oneBitFit = KvBudget.fit("1-bit", budgetBytes, layers,
                    sequenceUsage(ctx, oneBit, layers, generatedTokens));
            KvBudget.Fit twoBitFit = KvBudget.fit("2-bit", budgetBytes, layers,
                    sequenceUsage(ctx, twoBit, layers, generatedTokens));
            BudgetBenchmark bench = new BudgetBenchmark(ctx, catalog, reps, steps);
            PathFigures fp16 = bench.measure(null, fp16Fit, generatedTokens, maxStepBatch);
            PathFigures one = bench.measure(oneBit, oneBitFit, generatedTokens, maxStepBatch);
            PathFigures two = bench.measure(twoBit, twoBitFit, generatedTokens, maxStepBatch);
            return new Report(ctx.device().name(), catalog.target(), budgetBytes, layers, generatedTokens,
                    generatedTokens / 2, fp16, one, two);
        } finally {
            catalog.close();
        }
    }

    /**
     * What one sequence of the workload holds over {@code layers} layers, as its cache accounts it: one sequence
     * reserving {@code generatedTokens}, filled in every layer of a device cache on this device, then freed.
     *
     * @param config the 1-bit (or 2-, 4-bit) quantization, or {@code null} for the fp16 cache
     */
    public static MemoryUsage sequenceUsage(CudaContext ctx, QuantConfig config, int layers, int generatedTokens) {
        ModelGeometry g = new ModelGeometry(layers, QUERY_HEADS, KV_HEADS, HEAD_DIM);
        long fp16Layer = 2L * 2 * KV_HEADS * HEAD_DIM * (TOKENS + generatedTokens + 64L);
        try (Arena arena = Arena.ofConfined(); DeviceKvCache cache = DeviceKvCache.open(ctx, g, layers * fp16Layer);
                Sequence s = create(cache.manager(), config, generatedTokens)) {
            Random random = new Random(1);
            MemorySegment k = GpuScenario.fp16(arena, GpuScenario.normal(random, KV_HEADS, TOKENS, HEAD_DIM, 4));
            MemorySegment v = GpuScenario.fp16(arena, GpuScenario.normal(random, KV_HEADS, TOKENS, HEAD_DIM, 0));
            for (int l = 0; l < layers; l++) {
                s.fill(l, k, v, DType.FP16);
            }
            return s.usage();
        }
    }

    /** A sequence of the workload: its visual span quantized with {@code config}, or all fp16 for {@code null}. */
    private static Sequence create(KvCacheManager manager, QuantConfig config, int generatedTokens) {
        return config == null ? manager.createSequence(TOKENS, List.of(), null, generatedTokens)
                : manager.createSequence(TOKENS, VISUAL_SPANS, config, generatedTokens);
    }

    private PathFigures measure(QuantConfig config, KvBudget.Fit fit, int generatedTokens, int maxStepBatch) {
        int n = fit.sequences();
        KvBudget.Split split = KvBudget.split(n, maxStepBatch > 0 ? Math.min(maxStepBatch, n) : n);
        String reason = split.whole() ? "" : "at most " + maxStepBatch + " sequences per step asked for";
        while (true) {
            try {
                double[] t = timeStep(config, split.subBatchSize(), generatedTokens, fit.sequenceLayerBytes());
                return new PathFigures(fit, split, reason, t[0], (int) t[1], (int) t[2]);
            } catch (CudaOutOfMemoryException e) {
                if (split.subBatchSize() == 1) {
                    throw e;
                }
                reason = "one step of " + split.subBatchSize() + " sequences did not fit in device memory";
                split = split.halved();
            }
        }
    }

    /**
     * {median µs of one layer's step over {@code batch} sequences, work items, calibration mode}; one sequence's layer
     * holds {@code layerBytes} (the fit's own accounting).
     */
    private double[] timeStep(QuantConfig config, int batch, int generatedTokens, long layerBytes) {
        ModelGeometry g = new ModelGeometry(1, QUERY_HEADS, KV_HEADS, HEAD_DIM);
        // A few distinct prompts, cycled: the data does not change the work, and host time stays small.
        int templates = Math.min(batch, 4);
        long perSequence = layerBytes + 4096; // and room for the storage's 64-byte rounding of each block
        try (Arena arena = Arena.ofConfined();
                DeviceKvCache cache = DeviceKvCache.open(ctx, g, batch * perSequence);
                DeviceBuffer dq = ctx.allocate(2L * batch * QUERY_HEADS * HEAD_DIM);
                DeviceBuffer out = ctx.allocate(4L * batch * QUERY_HEADS * HEAD_DIM);
                CudaStream s = ctx.createStream(); CudaEvent e0 = ctx.createEvent(); CudaEvent e1 = ctx.createEvent()) {
            DeviceDecodeAttention attention = cache.attention(config == null ? Calibration.OFF : config.calibration());
            List<MemorySegment[]> prompts = new ArrayList<>();
            for (int i = 0; i < templates; i++) {
                prompts.add(new MemorySegment[] {
                    GpuScenario.fp16(arena, GpuScenario.normal(random, KV_HEADS, TOKENS, HEAD_DIM, 4)),
                    GpuScenario.fp16(arena, GpuScenario.normal(random, KV_HEADS, TOKENS, HEAD_DIM, 0))});
            }
            List<Sequence> seqs = new ArrayList<>();
            try {
                for (int b = 0; b < batch; b++) {
                    Sequence seq = create(cache.manager(), config, generatedTokens);
                    seqs.add(seq);
                    MemorySegment[] p = prompts.get(b % templates);
                    seq.fill(0, p[0], p[1], DType.FP16);
                }
                // the mean context over the generation: half the generated tokens held
                MemorySegment k = GpuScenario.fp16(arena, GpuScenario.normal(random, batch, KV_HEADS, HEAD_DIM, 4));
                MemorySegment v = GpuScenario.fp16(arena, GpuScenario.normal(random, batch, KV_HEADS, HEAD_DIM, 0));
                for (int i = 0; i < generatedTokens / 2; i++) {
                    cache.manager().append(0, seqs, k, v, DType.FP16);
                }
                dq.copyFrom(GpuScenario.fp16(arena, GpuScenario.normal(random, batch, QUERY_HEADS, HEAD_DIM, 0)));
                try (DeviceDecodeAttention.PreparedStep step = attention.prepare(0, seqs)) {
                    double[] t = new double[reps];
                    for (int r = -1; r < reps; r++) {
                        e0.record(s);
                        for (int i = 0; i < steps; i++) {
                            step.launch(dq, out, s);
                        }
                        e1.record(s);
                        e1.synchronize();
                        if (r >= 0) {
                            t[r] = e1.elapsedMillisSince(e0) * 1e3 / steps;
                        }
                    }
                    return new double[] {DecodeBenchmark.median(t), step.info().workItems(),
                        step.info().calibrationMode()};
                }
            } finally {
                seqs.forEach(Sequence::close);
            }
        }
    }
}
