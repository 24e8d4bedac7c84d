package dev.calibquant.bench;

import dev.calibquant.gpu.DecodeStepInfo;
import dev.calibquant.gpu.DeviceDecodeAttention;
import dev.calibquant.gpu.DeviceKvCache;
import dev.calibquant.selftest.GpuScenario;
import dev.calibquant.selftest.QuantizeScratch;

import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.CudaEvent;
import dev.calibquant.cuda.CudaStream;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.kernels.CalibQuantKernels;
import dev.calibquant.kernels.CalibQuantKernels.CachePointers;
import dev.calibquant.kernels.QuantizePlan;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;

/**
 * The workload of docs/benchmarks.md on the GPU: one decode step of one layer of InternVL2.5-8B (32 query heads, 8 KV
 * heads, head dim 128; per sequence 41 prefix + 3328 visual + 64 text tokens), for the 1-bit CalibQuant cache and
 * the fp16 cache on the same layout. Times are medians over repetitions of the GPU time of {@code steps}
 * back-to-back steps launched from Java (CUDA events), so launch overhead counts where it limits. Each figure is taken
 * after a warm-up of the same launches (up to {@value #WARMUP_LAUNCHES} or {@value #WARMUP_MILLIS} ms): a service
 * launches millions of steps, so its launch path runs JIT-compiled; without it B = 1 measured the interpreter
 * (28 µs of host time per step on the H200 against 10 µs warm).
 */
public final class DecodeBenchmark {
    static final int WARMUP_LAUNCHES = 5000;
    static final int WARMUP_MILLIS = 1000;

    /** Repeats {@code launch} until the JIT has seen it often (a bounded number of times, draining the stream). */
    private static void warmUp(Runnable launch, CudaStream s) {
        long end = System.nanoTime() + WARMUP_MILLIS * 1_000_000L;
        for (int i = 0; i < WARMUP_LAUNCHES && System.nanoTime() < end; i++) {
            launch.run();
            if (i % 64 == 63) {
                s.synchronize(); // keep the queue short: the host must not run far ahead of the GPU
            }
        }
        s.synchronize();
    }

    public static final int QUERY_HEADS = 32;
    public static final int KV_HEADS = 8;
    public static final int HEAD_DIM = 128;
    public static final int PREFIX = 41;
    public static final int VISUAL = 3328;
    public static final int TEXT = 64;
    public static final int TOKENS = PREFIX + VISUAL + TEXT;

    /**
     * One batch size's figures; times in microseconds, bandwidth in GB/s (bytes read + written). The 2- and 4-bit
     * steps (each width's default config, calibrated) and their floors are NaN in records written before they were
     * measured.
     */
    public record Row(int batch, double calibQuantUs, double fp16Us, double quantizeUs, double quantizeGBs,
            double fp16FloorUs, double oneBitFloorUs, int calibrationMode, int workItems, double calibQuantGraphUs,
            double calibQuantHostUs, double calibQuantCallUs, double twoBitUs, double twoBitFloorUs,
            double fourBitUs, double fourBitFloorUs) {
        public double speedupOverFp16() {
            return fp16Us / calibQuantUs;
        }

        public double overOneBitFloor() {
            return calibQuantUs / oneBitFloorUs;
        }
    }

    /** @param kernelImage what the kernel load read: {@code cubin} or {@code ptx} (driver JIT), {@code ?} if unknown */
    public record Report(String device, String target, double copyGBs, double kernelLoadMs, List<Row> rows,
            String kernelImage) {}

    private final CudaContext ctx;
    private final KernelCatalog catalog;
    private final DeviceKvCache.KernelChoice choice;
    private final int reps;
    private final int steps;
    private final Random random = new Random(20261128);

    public DecodeBenchmark(CudaContext ctx, KernelCatalog catalog, int reps, int steps) {
        this.ctx = ctx;
        this.catalog = catalog;
        this.choice = DeviceKvCache.KernelChoice.of(catalog.target(), catalog.image() == KernelCatalog.Image.PTX);
        this.reps = reps;
        this.steps = steps;
    }

    /** Least HBM bytes of an fp16 step: all keys and values once. */
    public static double fp16FloorBytes(int b) {
        return 2.0 * b * KV_HEADS * TOKENS * HEAD_DIM * 2;
    }

    /** Least HBM bytes of a 1-bit step: the codes, the fp16 prefix/text, and the per-channel scales. */
    public static double oneBitFloorBytes(int b) {
        return quantizedFloorBytes(b, 1);
    }

    /**
     * Least HBM bytes of a step whose visual span is quantized per channel at {@code bits}: keys' and values' codes
     * ({@code bits} per element), the fp16 prefix and text, and the fp32 scale and offset per channel of each.
     */
    public static double quantizedFloorBytes(int b, int bits) {
        return 2.0 * b * KV_HEADS * VISUAL * HEAD_DIM * bits / 8 + 2.0 * b * KV_HEADS * (PREFIX + TEXT) * HEAD_DIM * 2
                + 4.0 * b * KV_HEADS * HEAD_DIM * 2 * 2;
    }

    private static double floorUs(double bytes, double copyGBs) {
        return bytes / (copyGBs * 1e9) * 1e6;
    }

    /** Device-to-device copy bandwidth, bytes read + written, over a 1 GiB buffer. */
    public double copyBandwidthGBs() {
        long bytes = 1L << 30;
        try (DeviceBuffer a = ctx.allocate(bytes); DeviceBuffer b = ctx.allocate(bytes); CudaStream s = ctx.createStream();
                CudaEvent e0 = ctx.createEvent(); CudaEvent e1 = ctx.createEvent()) {
            a.fill((byte) 1);
            double[] t = new double[reps];
            for (int r = -2; r < reps; r++) {
                e0.record(s);
                b.copyFromAsync(a, 0, 0, bytes, s);
                e1.record(s);
                e1.synchronize();
                if (r >= 0) {
                    t[r] = e1.elapsedMillisSince(e0);
                }
            }
            return 2.0 * bytes / (median(t) * 1e-3) / 1e9;
        }
    }

    /** All figures for one batch size; floors from the measured copy bandwidth {@code copyGBs}. */
    public Row measure(int batch, double copyGBs) {
        ModelGeometry g = new ModelGeometry(1, QUERY_HEADS, KV_HEADS, HEAD_DIM);
        List<TokenSpan> spans = List.of(new TokenSpan(PREFIX, PREFIX + VISUAL));
        // A few distinct prompts, cycled: the data does not change the work, and host time stays small.
        int templates = Math.min(batch, 4);
        try (Arena arena = Arena.ofConfined()) {
            List<MemorySegment[]> prompts = new ArrayList<>();
            for (int i = 0; i < templates; i++) {
                prompts.add(new MemorySegment[] {
                    GpuScenario.fp16(arena, GpuScenario.normal(random, KV_HEADS, TOKENS, HEAD_DIM, 4)),
                    GpuScenario.fp16(arena, GpuScenario.normal(random, KV_HEADS, TOKENS, HEAD_DIM, 0))});
            }
            MemorySegment q = GpuScenario.fp16(arena, GpuScenario.normal(random, batch, QUERY_HEADS, HEAD_DIM, 0));
            double[] one = timeCache(g, QuantConfig.defaults(1), batch, spans, prompts, q);
            double[] two = timeCache(g, QuantConfig.defaults(2), batch, spans, prompts, q);
            double[] four = timeCache(g, QuantConfig.defaults(4), batch, spans, prompts, q);
            double[] fp16 = timeCache(g, null, batch, spans, prompts, q);
            double[] quant = timeQuantize(batch, prompts.getFirst());
            double bytesQuant = 2.0 * batch * KV_HEADS * VISUAL * HEAD_DIM * 2 // read fp16 K and V
                    + 2.0 * batch * KV_HEADS * VISUAL * 16 + 4.0 * 4 * batch * KV_HEADS * HEAD_DIM; // codes, scales
            return new Row(batch, one[0], fp16[0], quant[0], bytesQuant / (quant[0] * 1e-6) / 1e9,
                    fp16FloorBytes(batch) / (copyGBs * 1e9) * 1e6, oneBitFloorBytes(batch) / (copyGBs * 1e9) * 1e6,
                    (int) one[1], (int) one[2], one[3], one[4], one[5], two[0], floorUs(quantizedFloorBytes(batch, 2),
                    copyGBs), four[0], floorUs(quantizedFloorBytes(batch, 4), copyGBs));
        }
    }

    /**
     * {median µs per step launched from Java, calibration mode, work items, median µs per step as a CUDA graph,
     * median µs the host spends queueing one step (the launch calls alone; where it exceeds the GPU's time per step,
     * launched steps are host-bound), median µs of one whole {@code decode} call from host memory (queries and tables
     * up in one copy, the launch, the output down in one copy, waited for)}. Through the one device cache and decode
     * path a service uses: {@link DeviceKvCache}, {@link DeviceDecodeAttention}.
     */
    private double[] timeCache(ModelGeometry g, QuantConfig config, int batch, List<TokenSpan> spans,
            List<MemorySegment[]> prompts, MemorySegment q) {
        long perSequence = 2L * 2 * KV_HEADS * HEAD_DIM * (TOKENS + 128) + 4096;
        try (DeviceKvCache cache = DeviceKvCache.open(ctx, g, batch * perSequence, choice);
                DeviceBuffer dq = ctx.allocate(q.byteSize());
                DeviceBuffer out = ctx.allocate(4L * batch * QUERY_HEADS * HEAD_DIM);
                CudaStream s = ctx.createStream(); CudaEvent e0 = ctx.createEvent(); CudaEvent e1 = ctx.createEvent();
                Arena arena = Arena.ofConfined()) {
            DeviceDecodeAttention attention = cache.attention(config == null ? Calibration.OFF : config.calibration());
            List<Sequence> seqs = new ArrayList<>();
            try {
                for (int b = 0; b < batch; b++) {
                    Sequence seq = config == null ? cache.manager().createSequence(TOKENS)
                            : cache.manager().createSequence(TOKENS, spans, config);
                    seqs.add(seq);
                    MemorySegment[] p = prompts.get(b % prompts.size());
                    seq.fill(0, p[0], p[1], DType.FP16);
                }
                dq.copyFrom(q);
                try (DeviceDecodeAttention.PreparedStep step = attention.prepare(0, seqs)) {
                    warmUp(() -> step.launch(dq, out, s), s);
                    double[] t = new double[reps];
                    double[] host = new double[reps];
                    for (int r = -1; r < reps; r++) {
                        e0.record(s);
                        long h0 = System.nanoTime();
                        for (int i = 0; i < steps; i++) {
                            step.launch(dq, out, s);
                        }
                        long h1 = System.nanoTime();
                        e1.record(s);
                        e1.synchronize();
                        if (r >= 0) {
                            t[r] = e1.elapsedMillisSince(e0) * 1e3 / steps;
                            host[r] = (h1 - h0) / 1e3 / steps;
                        }
                    }
                    double launched = median(t);
                    double hostUs = median(host);
                    double graphed;
                    try (var graph = ctx.captureGraph(s, () -> step.launch(dq, out, s))) {
                        for (int r = -1; r < reps; r++) {
                            e0.record(s);
                            for (int i = 0; i < steps; i++) {
                                graph.launch(s);
                            }
                            e1.record(s);
                            e1.synchronize();
                            if (r >= 0) {
                                t[r] = e1.elapsedMillisSince(e0) * 1e3 / steps;
                            }
                        }
                        graphed = median(t);
                    }
                    // the whole call a service makes per step and layer, host memory in and out
                    MemorySegment hostOut = arena.allocate(4L * batch * QUERY_HEADS * HEAD_DIM);
                    Runnable call = () -> attention.decode(0, seqs, q, DType.FP16, QUERY_HEADS, hostOut);
                    warmUp(call, s);
                    double[] whole = new double[reps];
                    for (int r = -1; r < reps; r++) {
                        long h0 = System.nanoTime();
                        for (int i = 0; i < steps; i++) {
                            call.run();
                        }
                        if (r >= 0) {
                            whole[r] = (System.nanoTime() - h0) / 1e3 / steps;
                        }
                    }
                    DecodeStepInfo info = step.info();
                    return new double[] {launched, info.calibrationMode(), info.workItems(), graphed, hostUs,
                        median(whole)};
                }
            } finally {
                seqs.forEach(Sequence::close);
            }
        }
    }

    /** {median µs} of quantizing {@code batch} visual spans (keys and values) at the end of prefill. */
    private double[] timeQuantize(int batch, MemorySegment[] prompt) {
        long promptBytes = 2L * KV_HEADS * TOKENS * HEAD_DIM;
        long codeBytes = (long) KV_HEADS * VISUAL * 16;
        long scaleFloats = (long) KV_HEADS * HEAD_DIM;
        CalibQuantKernels kernels = new CalibQuantKernels(catalog, HEAD_DIM, 1);
        QuantConfig c = QuantConfig.defaults(1);
        try (DeviceBuffer kin = ctx.allocate(promptBytes * batch); DeviceBuffer vin = ctx.allocate(promptBytes * batch);
                DeviceBuffer kc = ctx.allocate(codeBytes * batch); DeviceBuffer vc = ctx.allocate(codeBytes * batch);
                DeviceBuffer ks = ctx.allocate(4 * scaleFloats * batch); DeviceBuffer ka = ctx.allocate(4 * scaleFloats * batch);
                DeviceBuffer vs = ctx.allocate(4 * scaleFloats * batch); DeviceBuffer va = ctx.allocate(4 * scaleFloats * batch);
                CudaStream s = ctx.createStream(); CudaEvent e0 = ctx.createEvent(); CudaEvent e1 = ctx.createEvent()) {
            for (int b = 0; b < batch; b++) { // distinct copies: every span reads its own bytes from HBM
                kin.copyFrom(prompt[0], 0, b * promptBytes, promptBytes);
                vin.copyFrom(prompt[1], 0, b * promptBytes, promptBytes);
            }
            List<QuantizePlan.Span> spans = new ArrayList<>();
            for (int b = 0; b < batch; b++) {
                spans.add(new QuantizePlan.Span((long) b * promptBytes / 2, TOKENS, PREFIX, VISUAL, b * codeBytes,
                        b * scaleFloats));
            }
            double[] times = new double[reps];
            // the timed launch includes zeroing the plan's statistics and counters, as every launch does
            try (QuantizeScratch scratch = new QuantizeScratch(ctx, kernels.planQuantize(spans, KV_HEADS))) {
                warmUp(() -> scratch.launch(kernels, kin, vin, CachePointers.atStart(kin, vin, kc, vc, ks, ka, vs, va),
                        c.keyClip(), c.valueClip(), s), s);
                for (int r = -1; r < reps; r++) {
                    e0.record(s);
                    scratch.launch(kernels, kin, vin, CachePointers.atStart(kin, vin, kc, vc, ks, ka, vs, va),
                        c.keyClip(), c.valueClip(), s);
                    e1.record(s);
                    e1.synchronize();
                    if (r >= 0) {
                        times[r] = e1.elapsedMillisSince(e0) * 1e3;
                    }
                }
            }
            return new double[] {median(times)};
        }
    }

    /** Runs everything: kernel load time, copy bandwidth, then each batch size. */
    public static Report run(CudaContext ctx, int[] batches, int reps, int steps) {
        long t0 = System.nanoTime();
        KernelCatalog catalog = KernelCatalog.open(ctx);
        try {
            new CalibQuantKernels(catalog, HEAD_DIM, 1).preload();
            double loadMs = (System.nanoTime() - t0) / 1e6;
            DecodeBenchmark bench = new DecodeBenchmark(ctx, catalog, reps, steps);
            double copy = bench.copyBandwidthGBs();
            List<Row> rows = new ArrayList<>();
            for (int b : batches) {
                rows.add(bench.measure(b, copy));
            }
            return new Report(ctx.device().name(), catalog.target(), copy, loadMs, rows,
                    catalog.imageOf("fp16_decode_d" + HEAD_DIM));
        } finally {
            catalog.close();
        }
    }

    static double median(double[] x) {
        double[] s = x.clone();
        Arrays.sort(s);
        return s.length % 2 == 1 ? s[s.length / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
    }
}
