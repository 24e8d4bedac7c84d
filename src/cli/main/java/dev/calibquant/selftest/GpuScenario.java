package dev.calibquant.selftest;

import dev.calibquant.gpu.DecodeErrorBound;
import dev.calibquant.gpu.DecodeStepInfo;
import dev.calibquant.gpu.DeviceDecodeAttention;
import dev.calibquant.gpu.DeviceKvCache;

import dev.calibquant.attention.ReferenceAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.CalibrationPolicy;
import dev.calibquant.quant.ChannelQuantizer;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.KvSlice;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;

/**
 * One end-to-end check of the GPU path on fresh random data: prompts with visual spans are filled into a
 * {@link DeviceKvCache} (GPU quantization), tokens are appended, and one decode step runs with its output poisoned
 * first. Then everything is compared with the CPU: the full-precision rows bit for bit, codes and scales against
 * {@link ChannelQuantizer}, the attention output against {@link ReferenceAttention} (double precision) on the GPU's
 * own quantized data, within {@link GpuVerification}'s tolerances.
 */
public final class GpuScenario {

    /**
     * @param bits 1, 2 or 4 for a CalibQuant cache; 0 for an fp16 cache
     * @param spanLengths visual span lengths to draw from; each sequence gets 1..maxSpans spans
     */
    public record Case(int batch, int kvHeads, int group, int headDim, int bits, boolean calibrate,
            CalibrationPolicy policy, int[] spanLengths, int maxSpans, int prefix, int text, int appends) {
        @Override
        public String toString() {
            return "B" + batch + " kvh" + kvHeads + " G" + group + " D" + headDim + (bits == 0 ? " fp16" : " bits" + bits)
                    + (bits == 0 ? "" : calibrate ? " calib-" + policy : " no-calib") + " spans"
                    + Arrays.toString(spanLengths) + "x" + maxSpans + " appends" + appends;
        }
    }

    /** @param worstRatio largest attention error as a fraction of its tolerance */
    public record Result(boolean passed, double worstRatio, double worstScaleUlps, String failure, int workItems,
            int calibrationMode) {}

    /** One sequence's prompt: keys and values {@code [kvHeads][tokens][headDim]} as float (fp16 values). */
    public record Prompt(int tokens, List<TokenSpan> spans, float[] keys, float[] values) {}

    /**
     * What one run fed the GPU and got back, handed to an observer (the regression suite) after the decode step and
     * before the comparison with the CPU; the segments are valid only during the call.
     *
     * @param appended per appended step {keys, values}, each {@code [batch][kvHeads][headDim]}
     * @param queries {@code [batch][queryHeads][headDim]}
     * @param views each sequence's layer as the GPU held it during the step (downloaded)
     * @param gpuOut the step's output, fp32 {@code [batch][queryHeads][headDim]}
     * @param block the decode kernels' token block
     */
    public record Observed(List<Prompt> prompts, List<float[][]> appended, float[] queries, List<LayerKvView> views,
            MemorySegment gpuOut, int workItems, int calibrationMode, int block) {}

    private GpuScenario() {}

    public static Result run(CudaContext ctx, KernelCatalog catalog, Case c, Random random) {
        return run(ctx, catalog, c, random, o -> {}, true);
    }

    /**
     * {@link #run(CudaContext, KernelCatalog, Case, Random)}, showing {@code observer} what the GPU produced;
     * {@code oneLaunch} off keeps calibrated steps on modes 1 and 2 (see
     * {@link DeviceDecodeAttention#oneLaunchCalibration}). The cache loads the same kernel target and image as
     * {@code catalog}.
     */
    public static Result run(CudaContext ctx, KernelCatalog catalog, Case c, Random random,
            java.util.function.Consumer<Observed> observer, boolean oneLaunch) {
        QuantConfig config = c.bits() == 0 ? null
                : QuantConfig.defaults(c.bits()).withCalibrate(c.calibrate()).withPolicy(c.policy());
        ModelGeometry g = new ModelGeometry(1, c.kvHeads() * c.group(), c.kvHeads(), c.headDim());
        List<Prompt> prompts = new ArrayList<>();
        long bytes = 0;
        for (int b = 0; b < c.batch(); b++) {
            Prompt p = randomPrompt(c, random);
            prompts.add(p);
            bytes += 2L * 2 * c.kvHeads() * c.headDim() * (p.tokens() + c.appends() + 64) + (64L << 10);
        }
        DeviceKvCache.KernelChoice choice = DeviceKvCache.KernelChoice.of(catalog.target(),
                catalog.image() == KernelCatalog.Image.PTX);
        try (Arena arena = Arena.ofConfined(); DeviceKvCache cache = DeviceKvCache.open(ctx, g, 4 * bytes, choice)) {
            DeviceDecodeAttention attention = cache.attention(config == null ? Calibration.OFF : config.calibration());
            attention.oneLaunchCalibration(oneLaunch);
            List<Sequence> seqs = new ArrayList<>();
            try {
                return check(arena, cache, attention, seqs, prompts, config, g, c, random, observer);
            } finally {
                seqs.forEach(Sequence::close);
            }
        }
    }

    private static Result check(Arena arena, DeviceKvCache cache, DeviceDecodeAttention attention, List<Sequence> seqs,
            List<Prompt> prompts, QuantConfig config, ModelGeometry g, Case c, Random random,
            java.util.function.Consumer<Observed> observer) {
        KvCacheManager manager = cache.manager();
        for (Prompt p : prompts) {
            Sequence s = config == null ? manager.createSequence(p.tokens())
                    : manager.createSequence(p.tokens(), p.spans(), config);
            seqs.add(s);
            s.fill(0, fp16(arena, p.keys()), fp16(arena, p.values()), DType.FP16);
        }
        List<float[][]> appended = new ArrayList<>();
        for (int step = 0; step < c.appends(); step++) {
            float[] k = normal(random, c.batch(), c.kvHeads(), c.headDim(), 4);
            float[] v = normal(random, c.batch(), c.kvHeads(), c.headDim(), 0);
            manager.append(0, seqs, fp16(arena, k), fp16(arena, v), DType.FP16);
            appended.add(new float[][] {k, v});
        }
        double worstUlps = 0;
        List<LayerKvView> views = new ArrayList<>();
        for (int b = 0; b < c.batch(); b++) {
            LayerKvView view = cache.download(seqs.get(b), 0, arena);
            String bad = checkFullPrecisionRows(view, prompts.get(b), appended, b, c, config != null);
            if (bad == null && config != null) {
                for (int i = 0; i < prompts.get(b).spans().size() && bad == null; i++) {
                    double[] ulps = {0};
                    bad = checkQuantizer(arena, view.visualSpans().get(i), prompts.get(b), i, config, c, ulps);
                    worstUlps = Math.max(worstUlps, ulps[0]);
                }
            }
            if (bad != null) {
                return new Result(false, Double.NaN, worstUlps, "sequence " + b + ": " + bad, 0, -1);
            }
            views.add(view);
        }
        float[] qf = normal(random, c.batch(), g.queryHeads(), c.headDim(), 0);
        MemorySegment q = fp16(arena, qf);
        MemorySegment gpuOut = arena.allocate(4L * c.batch() * g.queryHeads() * c.headDim());
        attention.poisonOutputs(true);
        attention.decode(0, seqs, q, DType.FP16, g.queryHeads(), gpuOut);
        DecodeStepInfo step = attention.lastStep();
        observer.accept(new Observed(prompts, appended, qf, views, gpuOut, step.workItems(), step.calibrationMode(),
                step.tokenBlock()));
        MemorySegment cpuOut = arena.allocate(gpuOut.byteSize());
        new ReferenceAttention(config == null ? Calibration.OFF : config.calibration())
                .decode(views, q, DType.FP16, g.queryHeads(), cpuOut);
        double worst = 0;
        int d = c.headDim();
        for (int b = 0; b < c.batch(); b++) {
            for (int h = 0; h < g.queryHeads(); h++) {
                int row = (b * g.queryHeads() + h) * d;
                double tol = DecodeErrorBound.attentionTolerance(Arrays.copyOfRange(qf, row, row + d), views.get(b),
                        step);
                for (int j = 0; j < d; j++) {
                    float gv = gpuOut.getAtIndex(ValueLayout.JAVA_FLOAT, row + j);
                    float cv = cpuOut.getAtIndex(ValueLayout.JAVA_FLOAT, row + j);
                    double ratio = Math.abs(gv - cv) / tol;
                    if (!Float.isFinite(gv) || ratio > 1) {
                        return new Result(false, ratio, worstUlps, "out[" + b + "][" + h + "][" + j + "] GPU " + gv
                                + " CPU " + cv + " tolerance " + tol, step.workItems(), step.calibrationMode());
                    }
                    worst = Math.max(worst, ratio);
                }
            }
        }
        return new Result(true, worst, worstUlps, null, step.workItems(), step.calibrationMode());
    }

    private static Prompt randomPrompt(Case c, Random random) {
        int nSpans = 1 + random.nextInt(c.maxSpans());
        List<TokenSpan> spans = new ArrayList<>();
        int at = c.prefix();
        for (int i = 0; i < nSpans; i++) {
            int len = c.spanLengths()[random.nextInt(c.spanLengths().length)];
            spans.add(new TokenSpan(at, at + len));
            at += len + (i + 1 < nSpans ? 1 + random.nextInt(5) : c.text());
        }
        return new Prompt(at, spans, normal(random, c.kvHeads(), at, c.headDim(), 4),
                normal(random, c.kvHeads(), at, c.headDim(), 0));
    }

    /**
     * Normal values rounded to fp16, {@code [a][b][d]}; in each {@code [a]} the first {@code outliers} channels are
     * scaled ×8, like the outlier channels of real post-RoPE keys.
     */
    public static float[] normal(Random random, int a, int b, int d, int outliers) {
        float[] x = new float[a * b * d];
        for (int i = 0; i < x.length; i++) {
            double v = random.nextGaussian() * ((i % d) < outliers ? 8 : 1);
            x[i] = Float.float16ToFloat(Float.floatToFloat16((float) v));
        }
        return x;
    }

    public static MemorySegment fp16(Arena arena, float[] x) {
        return dev.calibquant.quant.Elements.allocateFrom(arena, DType.FP16, x);
    }

    /** Non-visual prompt rows in order, then the appended rows: bit-exact copies. */
    private static String checkFullPrecisionRows(LayerKvView view, Prompt p, List<float[][]> appended, int b, Case c,
            boolean quantized) {
        int d = c.headDim();
        List<Integer> tokens = new ArrayList<>();
        for (int t = 0; t < p.tokens(); t++) {
            final int tt = t;
            if (!quantized || p.spans().stream().noneMatch(s -> tt >= s.start() && tt < s.end())) {
                tokens.add(t);
            }
        }
        if (view.fullTokens() != tokens.size() + appended.size()) {
            return "holds " + view.fullTokens() + " full-precision tokens, expected " + (tokens.size() + appended.size());
        }
        for (int h = 0; h < c.kvHeads(); h++) {
            for (int r = 0; r < view.fullTokens(); r++) {
                for (int j = 0; j < d; j++) {
                    long at = 2 * (((long) h * view.fullCapacity() + r) * d + j);
                    float gk = Float.float16ToFloat(view.fullKeys().get(ValueLayout.JAVA_SHORT_UNALIGNED, at));
                    float gv = Float.float16ToFloat(view.fullValues().get(ValueLayout.JAVA_SHORT_UNALIGNED, at));
                    float ek;
                    float ev;
                    if (r < tokens.size()) {
                        int src = (h * p.tokens() + tokens.get(r)) * d + j;
                        ek = p.keys()[src];
                        ev = p.values()[src];
                    } else {
                        float[][] step = appended.get(r - tokens.size());
                        int src = (b * c.kvHeads() + h) * d + j;
                        ek = step[0][src];
                        ev = step[1][src];
                    }
                    if (Float.compare(gk, ek) != 0 || Float.compare(gv, ev) != 0) {
                        return "full-precision row " + r + " head " + h + " channel " + j + " is (" + gk + ", " + gv
                                + "), expected (" + ek + ", " + ev + ")";
                    }
                }
            }
        }
        return null;
    }

    private static String checkQuantizer(Arena arena, QuantizedSpan gpu, Prompt p, int spanIndex, QuantConfig config,
            Case c, double[] ulps) {
        TokenSpan span = p.spans().get(spanIndex);
        int kvh = c.kvHeads();
        int d = c.headDim();
        float[] ks = slice(p.keys(), kvh, p.tokens(), d, span);
        float[] vs = slice(p.values(), kvh, p.tokens(), d, span);
        QuantizedSpan cpu = ChannelQuantizer.quantize(config,
                KvSlice.dense(fp16(arena, ks), DType.FP16, kvh, span.length(), d),
                KvSlice.dense(fp16(arena, vs), DType.FP16, kvh, span.length(), d), arena);
        ulps[0] = Math.max(Math.max(GpuVerification.scaleUlps(cpu.keyScale(), gpu.keyScale()),
                        GpuVerification.scaleUlps(cpu.keyOffset(), gpu.keyOffset())),
                Math.max(GpuVerification.scaleUlps(cpu.valueScale(), gpu.valueScale()),
                        GpuVerification.scaleUlps(cpu.valueOffset(), gpu.valueOffset())));
        if (ulps[0] > GpuVerification.SCALE_ULPS) {
            return "span " + spanIndex + ": scales differ by " + ulps[0] + " ulps";
        }
        String bad = GpuVerification.unexplainedCodeDifference(ks, kvh, span.length(), d, c.bits(), cpu.keyCodes(),
                gpu.keyCodes(), cpu.keyScale(), cpu.keyOffset());
        if (bad == null) {
            bad = GpuVerification.unexplainedCodeDifference(vs, kvh, span.length(), d, c.bits(), cpu.valueCodes(),
                    gpu.valueCodes(), cpu.valueScale(), cpu.valueOffset());
        }
        return bad == null ? null : "span " + spanIndex + " codes: " + bad;
    }

    private static float[] slice(float[] x, int kvh, int tokens, int d, TokenSpan span) {
        float[] out = new float[kvh * span.length() * d];
        for (int h = 0; h < kvh; h++) {
            System.arraycopy(x, (h * tokens + span.start()) * d, out, h * span.length() * d, span.length() * d);
        }
        return out;
    }
}
