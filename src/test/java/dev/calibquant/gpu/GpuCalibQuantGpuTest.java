package dev.calibquant.gpu;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.attention.ReferenceAttention;
import dev.calibquant.attention.TestKvView;
import dev.calibquant.cache.CacheMemoryLimitException;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.cuda.Cuda;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.CalibrationPolicy;
import dev.calibquant.quant.ChannelQuantizer;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.KvSlice;
import dev.calibquant.quant.NonFiniteInputException;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import dev.calibquant.quant.TestTensors;
import dev.calibquant.testing.GpuTest;
import dev.calibquant.testing.Seeds;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The GPU path against the CPU reference, on fresh random inputs with outputs poisoned (NaN) before each launch.
 *
 * <p>Quantization: the GPU computes {@code x/σ + z} in fp32 and rounds half to even; the CPU decides each code in
 * exact arithmetic. They may differ only where the exact quotient lies within the fp32 error of a rounding
 * boundary, and the scales within a few ulps. Attention is then checked on the GPU's own quantized data
 * (downloaded), so quantizer and attention errors are not mixed.
 *
 * <p>Attention tolerance, per output element, from the kernels' arithmetic (fp16 tensor-core products with fp32
 * accumulation; operands not exact in fp16 travel as an fp16 hi/lo pair, ~2^-22 relative):
 * score error {@code E ≤ (D + 4)·2^-23·‖q‖₁·Kmax/√D}; calibration is affine with slope ≤ 1, and its γ, δ carry
 * error E, moving a calibrated score by at most another 2E (δ − γ ≥ τmax in the reference policy's useful range,
 * and the factor is clamped otherwise), softmax turns a score error ε into an output error ≤ 2ε·Vmax; the weighted
 * value sum adds {@code (2^-21 + (BN + N/BN + items + 8)·2^-24)·Vmax}. So
 * {@code tol = (6E + 2^-21 + (BN + N/BN + items + 8)·2^-24)·Vmax}.
 */
@GpuTest
class GpuCalibQuantGpuTest {
    private CudaContext ctx;
    private Random random;
    private long seed;

    @BeforeEach
    void open() {
        ctx = Cuda.device(0).openContext();
        seed = Seeds.fresh(getClass().getSimpleName());
        random = new Random(seed);
    }

    @AfterEach
    void close() {
        assertThat(ctx.liveResources()).as("GPU resources left open").isZero();
        ctx.close();
    }

    /** One test case: batch, geometry, bits (0 = fp16 cache), calibration, and the visual span lengths to draw from. */
    record Case(String target, int batch, int kvHeads, int group, int headDim, int bits, boolean calibrate,
            CalibrationPolicy policy, int[] spanLengths, int maxSpans, int prefix, int text, int appends) {
        @Override
        public String toString() {
            return target + " B" + batch + " kvh" + kvHeads + " G" + group + " D" + headDim + " bits" + bits
                    + (calibrate ? " calib " + policy : " nocalib") + " spans" + java.util.Arrays.toString(spanLengths)
                    + "x" + maxSpans;
        }
    }

    static Stream<Arguments> cases() {
        String h = KernelCatalog.HOPPER;
        String a = KernelCatalog.AMPERE;
        CalibrationPolicy ref = CalibrationPolicy.REFERENCE;
        CalibrationPolicy clamp = CalibrationPolicy.CLAMP_AT_ZERO;
        return Stream.of(
                new Case(h, 1, 8, 4, 128, 1, true, ref, new int[] {3328}, 1, 41, 64, 3),
                new Case(h, 3, 2, 1, 64, 2, true, clamp, new int[] {1, 7, 255}, 3, 5, 9, 2),
                new Case(h, 2, 1, 8, 128, 4, false, ref, new int[] {10_000}, 1, 3, 20, 1),
                new Case(h, 5, 4, 2, 64, 1, true, ref, new int[] {1, 7, 255, 3328}, 3, 17, 30, 2),
                new Case(h, 64, 8, 4, 128, 1, true, ref, new int[] {3328}, 1, 41, 64, 1),
                new Case(h, 256, 8, 2, 64, 1, true, clamp, new int[] {255}, 2, 41, 64, 1),
                new Case(h, 7, 2, 4, 128, 2, false, ref, new int[] {7, 255}, 2, 11, 3, 4),
                new Case(h, 4, 8, 4, 128, 0, false, ref, new int[] {3328}, 1, 41, 64, 2),
                new Case(h, 2, 2, 8, 64, 0, false, ref, new int[] {1, 255}, 2, 1, 1, 1),
                new Case(a, 3, 2, 1, 64, 2, true, clamp, new int[] {1, 7, 255}, 3, 5, 9, 2),
                new Case(a, 2, 8, 4, 128, 1, true, ref, new int[] {3328, 10_000}, 2, 41, 64, 1),
                new Case(a, 2, 4, 2, 128, 0, false, ref, new int[] {255}, 1, 9, 9, 1))
                .map(Arguments::of);
    }

    /** A random sequence: [prefix | span | text | span | text ...], fp16 keys with outlier channels. */
    private record Prompt(int tokens, List<TokenSpan> spans, float[] keys, float[] values) {}

    private Prompt randomPrompt(Case c) {
        int nSpans = 1 + random.nextInt(c.maxSpans());
        List<TokenSpan> spans = new ArrayList<>();
        int at = c.prefix();
        for (int i = 0; i < nSpans; i++) {
            int len = c.spanLengths()[random.nextInt(c.spanLengths().length)];
            spans.add(new TokenSpan(at, at + len));
            at += len + (i + 1 < nSpans ? 1 + random.nextInt(5) : c.text());
        }
        float[] k = TestTensors.roundTo(DType.FP16, TestTensors.normal(random, c.kvHeads(), at, c.headDim(), 4));
        float[] v = TestTensors.roundTo(DType.FP16, TestTensors.normal(random, c.kvHeads(), at, c.headDim(), 0));
        return new Prompt(at, spans, k, v);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void gpuMatchesTheCpuReference(Case c) {
        QuantConfig config = c.bits() == 0 ? null
                : QuantConfig.defaults(c.bits()).withCalibrate(c.calibrate()).withPolicy(c.policy());
        ModelGeometry g = new ModelGeometry(1, c.kvHeads() * c.group(), c.kvHeads(), c.headDim());
        List<Prompt> prompts = new ArrayList<>();
        long fullTokens = 0;
        long visualTokens = 0;
        long spans = 0;
        for (int b = 0; b < c.batch(); b++) {
            Prompt p = randomPrompt(c);
            prompts.add(p);
            fullTokens += p.tokens() + c.appends();
            visualTokens += p.spans().stream().mapToInt(TokenSpan::length).sum();
            spans += p.spans().size();
        }
        try (Arena arena = Arena.ofConfined();
                KernelCatalog catalog = KernelCatalog.open(ctx, c.target());
                GpuKvCache cache = new GpuKvCache(ctx, catalog, g, config,
                        new GpuKvCache.Capacity(fullTokens + 64L * c.batch(), visualTokens + 64L * spans, spans));
                GpuDecodeAttention attention = new GpuDecodeAttention(cache)) {
            List<GpuSequence> seqs = new ArrayList<>();
            for (Prompt p : prompts) {
                GpuSequence s = cache.createSequence(p.tokens(), p.spans(), c.appends());
                seqs.add(s);
                cache.fill(s, 0, TestTensors.write(arena, DType.FP16, p.keys()),
                        TestTensors.write(arena, DType.FP16, p.values()));
            }
            List<float[][]> appended = new ArrayList<>(); // per step: [keys, values] of [B][KVH][D]
            for (int step = 0; step < c.appends(); step++) {
                float[] k = TestTensors.roundTo(DType.FP16, TestTensors.normal(random, c.batch(), c.kvHeads(), c.headDim(), 4));
                float[] v = TestTensors.roundTo(DType.FP16, TestTensors.normal(random, c.batch(), c.kvHeads(), c.headDim(), 0));
                cache.append(seqs, 0, TestTensors.write(arena, DType.FP16, k), TestTensors.write(arena, DType.FP16, v));
                appended.add(new float[][] {k, v});
            }

            List<TestKvView> views = new ArrayList<>();
            for (int b = 0; b < c.batch(); b++) {
                TestKvView view = download(arena, cache, seqs.get(b), c);
                checkFullPrecisionRows(view, prompts.get(b), appended, b, c, config != null);
                if (config != null) {
                    checkQuantizer(arena, view, prompts.get(b), config, c);
                }
                views.add(view);
            }

            MemorySegment q = TestTensors.write(arena, DType.FP16,
                    TestTensors.roundTo(DType.FP16, TestTensors.normal(random, c.batch(), g.queryHeads(), c.headDim(), 0)));
            MemorySegment gpuOut = arena.allocate(4L * c.batch() * g.queryHeads() * c.headDim());
            gpuOut.fill((byte) 0x7f);
            attention.poisonOutputs(true);
            attention.decode(0, seqs, q, gpuOut);
            MemorySegment cpuOut = arena.allocate(gpuOut.byteSize());
            Calibration calibration = config == null ? Calibration.OFF : config.calibration();
            new ReferenceAttention(calibration).decode(views, q, DType.FP16, g.queryHeads(), cpuOut);
            compare(views, q, gpuOut, cpuOut, c, g, attention.prepare(0, seqs).workItems());
            for (GpuSequence s : seqs) {
                s.close();
            }
            assertThat(cache.usage().totalBytes()).isZero();
        }
    }

    /** The layer as the GPU holds it, copied to host memory and seen as a {@link TestKvView}. */
    private TestKvView download(Arena arena, GpuKvCache cache, GpuSequence s, Case c) {
        int kvh = c.kvHeads();
        int d = c.headDim();
        long fullBytes = 2L * kvh * s.fullCapacity() * d;
        MemorySegment k = arena.allocate(fullBytes);
        MemorySegment v = arena.allocate(fullBytes);
        cache.fullPool().buffer(0).copyTo(2 * s.fullOffset[0], k, 0, fullBytes);
        cache.fullPool().buffer(1).copyTo(2 * s.fullOffset[0], v, 0, fullBytes);
        List<QuantizedSpan> spans = new ArrayList<>();
        for (int i = 0; i < s.quantizedSpans().size(); i++) {
            int tokens = s.quantizedSpans().get(i).length();
            long codeBytes = (long) kvh * tokens * d * c.bits() / 8;
            MemorySegment kc = arena.allocate(codeBytes);
            MemorySegment vc = arena.allocate(codeBytes);
            cache.codePool().buffer(0).copyTo(s.codeOffset[0][i], kc, 0, codeBytes);
            cache.codePool().buffer(1).copyTo(s.codeOffset[0][i], vc, 0, codeBytes);
            MemorySegment[] sc = new MemorySegment[4];
            for (int j = 0; j < 4; j++) {
                sc[j] = arena.allocate(4L * kvh * d);
                cache.scalePool().buffer(j).copyTo(4 * s.scaleOffset[0][i], sc[j], 0, 4L * kvh * d);
            }
            spans.add(new QuantizedSpan(tokens, kvh, d, c.bits(), Granularity.PER_CHANNEL, Granularity.PER_CHANNEL,
                    kc, vc, sc[0], sc[1], sc[2], sc[3]));
        }
        return new TestKvView(kvh, d, DType.FP16, s.fullTokens(0), s.fullCapacity(), k, v, spans);
    }

    /** Non-visual prompt rows, in order, then the appended rows: bit-exact copies. */
    private void checkFullPrecisionRows(TestKvView view, Prompt p, List<float[][]> appended, int b, Case c,
            boolean quantized) {
        int d = c.headDim();
        List<Integer> tokens = new ArrayList<>();
        for (int t = 0; t < p.tokens(); t++) {
            final int tt = t;
            if (!quantized || p.spans().stream().noneMatch(s -> tt >= s.start() && tt < s.end())) {
                tokens.add(t);
            }
        }
        assertThat(view.fullTokens()).isEqualTo(tokens.size() + appended.size());
        float[] k = TestTensors.read(view.fullKeys(), DType.FP16);
        float[] v = TestTensors.read(view.fullValues(), DType.FP16);
        for (int h = 0; h < c.kvHeads(); h++) {
            for (int r = 0; r < view.fullTokens(); r++) {
                for (int j = 0; j < d; j++) {
                    long at = ((long) h * view.fullCapacity() + r) * d + j;
                    float ek;
                    float ev;
                    if (r < tokens.size()) {
                        long src = ((long) h * p.tokens() + tokens.get(r)) * d + j;
                        ek = p.keys()[(int) src];
                        ev = p.values()[(int) src];
                    } else {
                        float[][] step = appended.get(r - tokens.size());
                        int src = (b * c.kvHeads() + h) * d + j;
                        ek = step[0][src];
                        ev = step[1][src];
                    }
                    if (k[(int) at] != ek || v[(int) at] != ev) {
                        throw new AssertionError("seed " + seed + ": full-precision row " + r + " head " + h
                                + " channel " + j + " is (" + k[(int) at] + ", " + v[(int) at] + "), expected (" + ek
                                + ", " + ev + ")");
                    }
                }
            }
        }
    }

    /** GPU codes and scales against the CPU quantizer on the same span input. */
    private void checkQuantizer(Arena arena, TestKvView view, Prompt p, QuantConfig config, Case c) {
        int levels = config.levels();
        MemorySegment k = TestTensors.write(arena, DType.FP16, p.keys());
        MemorySegment v = TestTensors.write(arena, DType.FP16, p.values());
        for (int i = 0; i < p.spans().size(); i++) {
            TokenSpan span = p.spans().get(i);
            QuantizedSpan cpu = ChannelQuantizer.quantize(config,
                    KvSlice.ofTokens(k, DType.FP16, c.kvHeads(), p.tokens(), c.headDim(), span.start(), span.end()),
                    KvSlice.ofTokens(v, DType.FP16, c.kvHeads(), p.tokens(), c.headDim(), span.start(), span.end()), arena);
            QuantizedSpan gpu = view.visualSpans().get(i);
            compareScales("σK", cpu.keyScale(), gpu.keyScale());
            compareScales("αK", cpu.keyOffset(), gpu.keyOffset());
            compareScales("σV", cpu.valueScale(), gpu.valueScale());
            compareScales("αV", cpu.valueOffset(), gpu.valueOffset());
            compareCodes("keys", p.keys(), p.tokens(), span, cpu.keyCodes(), gpu.keyCodes(), cpu.keyScale(),
                    cpu.keyOffset(), levels, c);
            compareCodes("values", p.values(), p.tokens(), span, cpu.valueCodes(), gpu.valueCodes(), cpu.valueScale(),
                    cpu.valueOffset(), levels, c);
        }
    }

    private void compareScales(String what, MemorySegment cpu, MemorySegment gpu) {
        for (long i = 0; i < cpu.byteSize() / 4; i++) {
            float a = cpu.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            float b = gpu.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            // σ = (β − α)/L: the GPU rounds β − α to fp32 before dividing, the CPU divides in double: ≤ 2 ulp apart
            if (Math.abs(a - b) > 2 * Math.ulp(Math.abs(a))) {
                throw new AssertionError("seed " + seed + ": " + what + "[" + i + "] GPU " + b + " CPU " + a);
            }
        }
    }

    private void compareCodes(String what, float[] x, int promptTokens, TokenSpan span, MemorySegment cpu,
            MemorySegment gpu, MemorySegment sigma, MemorySegment alpha, int levels, Case c) {
        int d = c.headDim();
        int bits = c.bits();
        int perByte = 8 / bits;
        int rowBytes = d * bits / 8;
        for (int h = 0; h < c.kvHeads(); h++) {
            for (int t = 0; t < span.length(); t++) {
                for (int j = 0; j < d; j++) {
                    long byteAt = ((long) h * span.length() + t) * rowBytes + j / perByte;
                    int shift = bits * (perByte - 1 - j % perByte);
                    int a = (cpu.get(ValueLayout.JAVA_BYTE, byteAt) >> shift) & levels;
                    int b = (gpu.get(ValueLayout.JAVA_BYTE, byteAt) >> shift) & levels;
                    if (a == b) {
                        continue;
                    }
                    float s = sigma.getAtIndex(ValueLayout.JAVA_FLOAT, (long) h * d + j);
                    float al = alpha.getAtIndex(ValueLayout.JAVA_FLOAT, (long) h * d + j);
                    float xv = x[(int) (((long) h * promptTokens + span.start() + t) * d + j)];
                    double u = ((double) xv - al) / s;
                    // fp32 x/σ + z carries ~3 roundings of magnitude ≤ |x/σ| + |z|: a boundary within that may flip
                    double slack = 0x1p-21 * (Math.abs(xv / s) + Math.abs(al / s) + levels);
                    double toBoundary = Math.abs(u - Math.floor(u) - 0.5);
                    if (Math.abs(a - b) != 1 || toBoundary > slack) {
                        throw new AssertionError("seed " + seed + ": " + what + " code head " + h + " token " + t
                                + " channel " + j + ": GPU " + b + " CPU " + a + " (x/σ+z = " + u + ")");
                    }
                }
            }
        }
    }

    private void compare(List<TestKvView> views, MemorySegment q, MemorySegment gpuOut, MemorySegment cpuOut, Case c,
            ModelGeometry g, int items) {
        int d = c.headDim();
        float[] qs = TestTensors.read(q, DType.FP16);
        double worst = 0;
        for (int b = 0; b < c.batch(); b++) {
            TestKvView view = views.get(b);
            double[] kv = maxAbs(view);
            int n = view.fullTokens() + view.visualSpans().stream().mapToInt(QuantizedSpan::tokens).sum();
            for (int h = 0; h < g.queryHeads(); h++) {
                double q1 = 0;
                for (int j = 0; j < d; j++) {
                    q1 += Math.abs(qs[(b * g.queryHeads() + h) * d + j]);
                }
                double e = (d + 4) * 0x1p-23 * q1 * kv[0] / Math.sqrt(d);
                double tol = (6 * e + 0x1p-21 + (64 + n / 64.0 + items + 8) * 0x1p-24) * kv[1];
                for (int j = 0; j < d; j++) {
                    long i = ((long) b * g.queryHeads() + h) * d + j;
                    float gv = gpuOut.getAtIndex(ValueLayout.JAVA_FLOAT, i);
                    float cv = cpuOut.getAtIndex(ValueLayout.JAVA_FLOAT, i);
                    if (!Float.isFinite(gv) || Math.abs(gv - cv) > tol) {
                        throw new AssertionError("seed " + seed + " " + c + ": out[" + b + "][" + h + "][" + j + "] GPU "
                                + gv + " CPU " + cv + " (tolerance " + tol + ")");
                    }
                    worst = Math.max(worst, Math.abs(gv - cv) / tol);
                }
            }
        }
        System.out.printf("[calibquant] %s: worst error %.3f of tolerance%n", c, worst);
    }

    /** {Kmax, Vmax}: largest magnitude of any key and value the sequence attends to (rebuilt ones included). */
    private static double[] maxAbs(TestKvView view) {
        double kmax = 0;
        double vmax = 0;
        int d = view.headDim();
        float[] k = TestTensors.read(view.fullKeys(), DType.FP16);
        float[] v = TestTensors.read(view.fullValues(), DType.FP16);
        for (int h = 0; h < view.kvHeads(); h++) {
            for (int r = 0; r < view.fullTokens(); r++) {
                for (int j = 0; j < d; j++) {
                    int at = (h * view.fullCapacity() + r) * d + j;
                    kmax = Math.max(kmax, Math.abs(k[at]));
                    vmax = Math.max(vmax, Math.abs(v[at]));
                }
            }
        }
        for (QuantizedSpan s : view.visualSpans()) {
            int levels = (1 << s.bits()) - 1;
            for (int i = 0; i < s.kvHeads() * d; i++) {
                float sk = s.keyScale().getAtIndex(ValueLayout.JAVA_FLOAT, i);
                float ak = s.keyOffset().getAtIndex(ValueLayout.JAVA_FLOAT, i);
                float sv = s.valueScale().getAtIndex(ValueLayout.JAVA_FLOAT, i);
                float av = s.valueOffset().getAtIndex(ValueLayout.JAVA_FLOAT, i);
                kmax = Math.max(kmax, Math.max(Math.abs(ak), Math.abs(ak + levels * sk)));
                vmax = Math.max(vmax, Math.max(Math.abs(av), Math.abs(av + levels * sv)));
            }
        }
        return new double[] {kmax, vmax};
    }

    @Test
    void badInputIsRejectedBeforeTheGpuSeesIt() {
        ModelGeometry g = new ModelGeometry(2, 8, 2, 128);
        try (Arena arena = Arena.ofConfined(); KernelCatalog catalog = KernelCatalog.open(ctx);
                GpuKvCache cache = new GpuKvCache(ctx, catalog, g, QuantConfig.defaults(1),
                        new GpuKvCache.Capacity(200, 200, 4));
                GpuDecodeAttention attention = new GpuDecodeAttention(cache)) {
            GpuSequence s = cache.createSequence(100, List.of(new TokenSpan(10, 90)), 1);
            float[] k = TestTensors.normal(random, 2, 100, 128, 4);
            MemorySegment keys = TestTensors.write(arena, DType.FP16, k);
            MemorySegment values = TestTensors.write(arena, DType.FP16, TestTensors.normal(random, 2, 100, 128, 0));
            assertThatThrownBy(() -> cache.fill(s, 0, keys.asSlice(2), values))
                    .hasMessageContaining("expected");
            MemorySegment nan = arena.allocate(keys.byteSize());
            nan.copyFrom(keys);
            nan.set(ValueLayout.JAVA_SHORT_UNALIGNED, 2L * (128 * 150 + 7), (short) 0x7e00);
            assertThatThrownBy(() -> cache.fill(s, 0, nan, values)).isInstanceOf(NonFiniteInputException.class)
                    .hasMessageContaining("head 1").hasMessageContaining("token 50");
            assertThat(s.isFilled(0)).isFalse();
            assertThatThrownBy(() -> cache.fill(s, 2, keys, values)).isInstanceOf(IndexOutOfBoundsException.class);
            cache.fill(s, 0, keys, values);
            assertThatThrownBy(() -> cache.fill(s, 0, keys, values)).isInstanceOf(IllegalStateException.class);
            MemorySegment q = arena.allocate(2L * 8 * 128);
            MemorySegment out = arena.allocate(4L * 8 * 128);
            assertThatThrownBy(() -> attention.decode(1, List.of(s), q, out)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("not filled");
            assertThatThrownBy(() -> attention.decode(0, List.of(s), q.asSlice(2), out)).hasMessageContaining("queries");
            MemorySegment kn = arena.allocate(2L * 2 * 128);
            cache.append(List.of(s), 0, kn, kn);
            assertThatThrownBy(() -> cache.append(List.of(s), 0, kn, kn)).isInstanceOf(CacheMemoryLimitException.class)
                    .hasMessageContaining("reserved");
            assertThatThrownBy(() -> cache.createSequence(100, List.of(new TokenSpan(0, 100)), 1000))
                    .isInstanceOf(CacheMemoryLimitException.class);
            assertThat(cache.openSequences()).isEqualTo(1);
            s.close();
            s.close();
            assertThatThrownBy(() -> attention.decode(0, List.of(s), q, out)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("closed");
            assertThat(cache.usage().totalBytes()).isZero();
        }
    }
}
