package dev.calibquant.regression;

import dev.calibquant.gpu.DecodeErrorBound;
import dev.calibquant.kernels.DecodePlan;
import dev.calibquant.selftest.GpuScenario;
import dev.calibquant.selftest.QuantizePackCheck;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.attention.ReferenceAttention;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.kernels.KernelManifest;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.ChannelQuantizer;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.KvSlice;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import dev.calibquant.regression.CaseSpec;
import dev.calibquant.regression.Expectations;
import dev.calibquant.regression.Observation;
import dev.calibquant.regression.ObservedOutput;
import dev.calibquant.regression.OutputComparison;
import dev.calibquant.regression.OutputKind;
import dev.calibquant.testing.Seeds;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * The GPU side of the regression suite without a GPU: its outputs are built from a CPU twin of what a
 * {@link GpuScenario} run hands its observer (the same layout, quantized by {@link ChannelQuantizer}, attention by
 * {@link ReferenceAttention}), and checked element by element against the inputs, in the order the suite records.
 * Also: the cases' shapes make the planner pick the variant's calibration mode on any GPU of 13 to 200 SMs.
 */
class RegressionScenariosTest {
    private static final KernelManifest MANIFEST = KernelManifest.loadShipped();
    private Random random;

    @BeforeEach
    void seed() {
        random = new Random(Seeds.fresh(getClass().getSimpleName()));
    }

    private static KernelManifest.Kernel kernel(String function, int d, int bits, int mode) {
        return MANIFEST.kernels().stream().filter(k -> k.function().equals(function))
                .filter(k -> num(k, "D") == d && (bits < 0 || num(k, "BITS") == bits) && (mode < 0 || num(k, "MM_MODE") == mode))
                .findFirst().orElseThrow();
    }

    private static int num(KernelManifest.Kernel k, String name) {
        return k.constexprs().get(name) instanceof Number n ? n.intValue() : -1;
    }

    /** What the GPU cache would hold for {@code c} and what a correct step would output, made on the CPU. */
    private static GpuScenario.Observed twin(GpuScenario.Case c, Random random, Arena arena) {
        QuantConfig config = c.bits() == 0 ? null
                : QuantConfig.defaults(c.bits()).withCalibrate(c.calibrate()).withPolicy(c.policy());
        int kvh = c.kvHeads();
        int d = c.headDim();
        List<GpuScenario.Prompt> prompts = new ArrayList<>();
        for (int b = 0; b < c.batch(); b++) {
            int n = 1 + random.nextInt(c.maxSpans());
            List<TokenSpan> spans = new ArrayList<>();
            int at = c.prefix();
            for (int i = 0; i < n; i++) {
                int len = c.spanLengths()[random.nextInt(c.spanLengths().length)];
                spans.add(new TokenSpan(at, at + len));
                at += len + (i + 1 < n ? 1 + random.nextInt(5) : c.text());
            }
            prompts.add(new GpuScenario.Prompt(at, spans, GpuScenario.normal(random, kvh, at, d, 4),
                    GpuScenario.normal(random, kvh, at, d, 0)));
        }
        List<float[][]> appended = new ArrayList<>();
        for (int s = 0; s < c.appends(); s++) {
            appended.add(new float[][] {GpuScenario.normal(random, c.batch(), kvh, d, 4),
                GpuScenario.normal(random, c.batch(), kvh, d, 0)});
        }
        List<LayerKvView> views = new ArrayList<>();
        for (int b = 0; b < c.batch(); b++) {
            GpuScenario.Prompt p = prompts.get(b);
            List<Integer> rows = new ArrayList<>();
            for (int t = 0; t < p.tokens(); t++) {
                final int tt = t;
                if (config == null || p.spans().stream().noneMatch(s -> tt >= s.start() && tt < s.end())) {
                    rows.add(t);
                }
            }
            int cap = rows.size() + c.appends();
            float[] k = new float[kvh * cap * d];
            float[] v = new float[kvh * cap * d];
            for (int h = 0; h < kvh; h++) {
                for (int r = 0; r < cap; r++) {
                    for (int j = 0; j < d; j++) {
                        int to = (h * cap + r) * d + j;
                        if (r < rows.size()) {
                            k[to] = p.keys()[(h * p.tokens() + rows.get(r)) * d + j];
                            v[to] = p.values()[(h * p.tokens() + rows.get(r)) * d + j];
                        } else {
                            float[][] step = appended.get(r - rows.size());
                            k[to] = step[0][(b * kvh + h) * d + j];
                            v[to] = step[1][(b * kvh + h) * d + j];
                        }
                    }
                }
            }
            List<QuantizedSpan> quantized = new ArrayList<>();
            if (config != null) {
                for (TokenSpan s : p.spans()) {
                    quantized.add(ChannelQuantizer.quantize(config,
                            KvSlice.ofTokens(GpuScenario.fp16(arena, p.keys()), DType.FP16, kvh, p.tokens(), d, s.start(), s.end()),
                            KvSlice.ofTokens(GpuScenario.fp16(arena, p.values()), DType.FP16, kvh, p.tokens(), d, s.start(), s.end()),
                            arena));
                }
            }
            views.add(new HostLayer(kvh, d, DType.FP16, cap, cap, GpuScenario.fp16(arena, k),
                    GpuScenario.fp16(arena, v), quantized));
        }
        int hq = kvh * c.group();
        float[] q = GpuScenario.normal(random, c.batch(), hq, d, 0);
        MemorySegment out = arena.allocate(4L * q.length);
        new ReferenceAttention(config == null ? Calibration.OFF : config.calibration())
                .decode(views, GpuScenario.fp16(arena, q), DType.FP16, hq, out);
        return new GpuScenario.Observed(prompts, appended, q, views, out, 7, c.calibrate() ? 2 : 0, 64);
    }

    private Observation observeTwin(KernelManifest.Kernel k, int index, Arena arena) {
        RegressionScenarios.Plan plan = RegressionScenarios.plans(MANIFEST, k).get(index);
        return RegressionScenarios.observe(plan, twin(plan.scenario(), random, arena));
    }

    @Test
    void attentionIsTheStepOutputWithEachRowsBound() {
        KernelManifest.Kernel k = kernel("calibquant_decode", 64, 1, 2);
        try (Arena arena = Arena.ofConfined()) {
            RegressionScenarios.Plan plan = RegressionScenarios.plans(MANIFEST, k).get(1);
            GpuScenario.Case c = plan.scenario();
            assertThat(c.group()).isEqualTo(RegressionScenarios.groups(MANIFEST, k)[1]);
            assertThat(Integer.bitCount(c.group())).as("group %d is not a power of two", c.group()).isGreaterThan(1);
            GpuScenario.Observed o = twin(c, random, arena);
            Observation obs = RegressionScenarios.observe(plan, o);
            assertThat(obs.outputs()).hasSize(1);
            ObservedOutput a = obs.outputs().getFirst();
            int hq = c.kvHeads() * c.group();
            assertThat(a.name()).isEqualTo("attention");
            assertThat(a.kind()).isEqualTo(OutputKind.ATTENTION);
            assertThat(a.count()).isEqualTo(c.batch() * hq * c.headDim());
            for (int b = 0; b < c.batch(); b++) {
                for (int h = 0; h < hq; h++) {
                    int row = (b * hq + h) * c.headDim();
                    double tol = DecodeErrorBound.attentionTolerance(Arrays.copyOfRange(o.queries(), row, row + c.headDim()),
                            o.views().get(b), o.workItems(), o.block());
                    for (int j = 0; j < c.headDim(); j++) {
                        assertThat(a.values()[row + j]).isEqualTo(o.gpuOut().getAtIndex(ValueLayout.JAVA_FLOAT, row + j));
                        assertThat(a.tolerance()[row + j]).isEqualTo(tol).isPositive();
                    }
                }
            }
            assertThat(obs.inputsSha256()).hasSize(64);
            assertThat(obs.cacheSha256()).hasSize(64);
            assertThat(obs.workItems()).isEqualTo(7);
        }
    }

    @Test
    void codesAndScalesFollowTheInputsInTheRecordedOrder() {
        for (int bits : new int[] {1, 2, 4}) {
            KernelManifest.Kernel k = kernel("quantize_pack", 64, bits, -1);
            try (Arena arena = Arena.ofConfined()) {
                RegressionScenarios.Plan plan = RegressionScenarios.plans(MANIFEST, k).get(0);
                GpuScenario.Case c = plan.scenario();
                GpuScenario.Observed o = twin(c, random, arena);
                Observation obs = RegressionScenarios.observe(plan, o);
                assertThat(obs.outputs()).extracting(ObservedOutput::name).containsExactly("codes", "scales");
                checkCodes(obs.outputs().get(0), obs.outputs().get(1), o, c, (1 << bits) - 1);
            }
        }
    }

    /** Each code is round((x − α)/σ) clamped to [0, L] for its input x and its span's σ, α — or a marked tie. */
    private static void checkCodes(ObservedOutput codes, ObservedOutput scales, GpuScenario.Observed o,
            GpuScenario.Case c, int levels) {
        int d = c.headDim();
        int kvh = c.kvHeads();
        int at = 0;
        int sat = 0;
        int ties = 0;
        for (int b = 0; b < c.batch(); b++) {
            GpuScenario.Prompt p = o.prompts().get(b);
            for (TokenSpan s : p.spans()) {
                float[][] x = {p.keys(), p.values()};
                for (int kv = 0; kv < 2; kv++) {
                    int sigmaAt = sat + 2 * kv * kvh * d;
                    int alphaAt = sigmaAt + kvh * d;
                    for (int h = 0; h < kvh; h++) {
                        for (int t = 0; t < s.length(); t++) {
                            for (int j = 0; j < d; j++) {
                                float xv = x[kv][(h * p.tokens() + s.start() + t) * d + j];
                                float sigma = scales.values()[sigmaAt + h * d + j];
                                float alpha = scales.values()[alphaAt + h * d + j];
                                int want = sigma == 0 ? 0
                                        : (int) Math.max(0, Math.min(levels, Math.rint(((double) xv - alpha) / sigma)));
                                int got = (int) codes.values()[at];
                                if (codes.tolerance()[at] == 1) {
                                    ties++;
                                    assertThat(Math.abs(got - want)).isLessThanOrEqualTo(1);
                                } else {
                                    assertThat(got).as("code %d (x %s, σ %s, α %s)", at, xv, sigma, alpha).isEqualTo(want);
                                }
                                at++;
                            }
                        }
                    }
                }
                for (int i = 0; i < 4 * kvh * d; i++) {
                    float v = scales.values()[sat + i];
                    assertThat(scales.tolerance()[sat + i])
                            .isEqualTo(4 * Math.ulp(Math.max(Math.abs(v), Float.MIN_NORMAL)));
                }
                sat += 4 * kvh * d;
            }
        }
        assertThat(at).isEqualTo(codes.count());
        assertThat(sat).isEqualTo(scales.count());
        assertThat(ties).as("rounding ties among %d codes", at).isLessThan(at / 1000 + 5);
    }

    @Test
    void eightBitCodesAndScalesFollowTheInputs() {
        KernelManifest.Kernel k = kernel("quantize_pack", 128, 8, -1);
        RegressionScenarios.Plan plan = RegressionScenarios.plans(MANIFEST, k).get(1);
        QuantizePackCheck.Spans layout = plan.spans8();
        int d = 128;
        QuantConfig config = QuantConfig.defaults(8);
        try (Arena arena = Arena.ofConfined()) {
            float[] keys = GpuScenario.normal(random, layout.kvHeads(), layout.prompt(), d, 4);
            float[] values = GpuScenario.normal(random, layout.kvHeads(), layout.prompt(), d, 0);
            List<MemorySegment[]> codes = new ArrayList<>();
            List<MemorySegment[]> scales = new ArrayList<>();
            for (int i = 0; i < layout.lengths().length; i++) {
                int from = layout.starts()[i];
                int to = from + layout.lengths()[i];
                QuantizedSpan q = ChannelQuantizer.quantize(config,
                        KvSlice.ofTokens(GpuScenario.fp16(arena, keys), DType.FP16, layout.kvHeads(), layout.prompt(), d, from, to),
                        KvSlice.ofTokens(GpuScenario.fp16(arena, values), DType.FP16, layout.kvHeads(), layout.prompt(), d, from, to),
                        arena);
                codes.add(new MemorySegment[] {q.keyCodes(), q.valueCodes()});
                scales.add(new MemorySegment[] {q.keyScale(), q.keyOffset(), q.valueScale(), q.valueOffset()});
            }
            Observation obs = RegressionScenarios.observe8(new QuantizePackCheck.Observed(layout, keys, values, codes, scales), d);
            ObservedOutput c = obs.outputs().get(0);
            ObservedOutput s = obs.outputs().get(1);
            int at = 0;
            int sat = 0;
            for (int i = 0; i < layout.lengths().length; i++) {
                float[][] x = {keys, values};
                for (int kv = 0; kv < 2; kv++) {
                    for (int h = 0; h < layout.kvHeads(); h++) {
                        for (int t = 0; t < layout.lengths()[i]; t++) {
                            for (int j = 0; j < d; j++) {
                                float xv = x[kv][(h * layout.prompt() + layout.starts()[i] + t) * d + j];
                                float sigma = s.values()[sat + 2 * kv * layout.kvHeads() * d + h * d + j];
                                float alpha = s.values()[sat + (2 * kv + 1) * layout.kvHeads() * d + h * d + j];
                                int want = sigma == 0 ? 0
                                        : (int) Math.max(0, Math.min(255, Math.rint(((double) xv - alpha) / sigma)));
                                if (c.tolerance()[at] == 0) {
                                    assertThat((int) c.values()[at]).isEqualTo(want);
                                }
                                at++;
                            }
                        }
                    }
                }
                sat += 4 * layout.kvHeads() * d;
            }
            assertThat(at).isEqualTo(c.count());
            assertThat(obs.cacheSha256()).isNull();
        }
    }

    @Test
    void appendedRowsAreTheRowsEachStepAppended() {
        KernelManifest.Kernel k = kernel("append_token", 64, -1, -1);
        for (int index = 0; index < 2; index++) {
            try (Arena arena = Arena.ofConfined()) {
                RegressionScenarios.Plan plan = RegressionScenarios.plans(MANIFEST, k).get(index);
                GpuScenario.Case c = plan.scenario();
                GpuScenario.Observed o = twin(c, random, arena);
                ObservedOutput rows = RegressionScenarios.observe(plan, o).outputs().getFirst();
                assertThat(rows.kind()).isEqualTo(OutputKind.EXACT);
                int d = c.headDim();
                int at = 0;
                for (int b = 0; b < c.batch(); b++) {
                    for (int kv = 0; kv < 2; kv++) {
                        for (int h = 0; h < c.kvHeads(); h++) {
                            for (int r = 0; r < c.appends(); r++) {
                                for (int j = 0; j < d; j++) {
                                    assertThat(rows.values()[at++]).isEqualTo(o.appended().get(r)[kv][(b * c.kvHeads() + h) * d + j]);
                                }
                            }
                        }
                    }
                }
                assertThat(at).isEqualTo(rows.count());
                assertThat(rows.tolerance()).containsOnly(0.0);
            }
        }
    }

    @Test
    void aRecordedTwinPassesAgainstItselfAndAFlippedCodeOutsideATieFails() {
        KernelManifest.Kernel k = kernel("quantize_pack", 128, 2, -1);
        try (Arena arena = Arena.ofConfined()) {
            Observation obs = observeTwin(k, 0, arena);
            ObservedOutput codes = obs.outputs().getFirst();
            Expectations.Output rec = Expectations.Output.of(codes);
            assertThat(OutputComparison.compare(rec, codes).passed()).isTrue();
            int i = Arrays.stream(rec.sampleIndex()).filter(x -> codes.tolerance()[x] == 0).findFirst().orElseThrow();
            float[] v = codes.values().clone();
            v[i] = v[i] == 0 ? 1 : v[i] - 1;
            OutputComparison.Verdict verdict = OutputComparison.compare(rec,
                    new ObservedOutput("codes", OutputKind.CODES, v, codes.tolerance()));
            assertThat(verdict.passed()).isFalse();
            assertThat(verdict.where()).isEqualTo("codes[" + i + "]");
        }
    }

    @Test
    void theSameSeedGivesTheSameInputsAndTheCaseShapesAreStable() {
        KernelManifest.Kernel k = kernel("fp16_decode", 128, -1, -1);
        List<CaseSpec> cases = RegressionScenarios.casesFor(MANIFEST, k);
        assertThat(cases).extracting(CaseSpec::shape).containsExactly(
                "B3 kvh2 G4 D128 fp16 spans[7, 300]x2 appends2 prefix5 text9",
                "B2 kvh1 G3 D128 fp16 spans[1, 255]x2 appends1 prefix1 text1");
        try (Arena arena = Arena.ofConfined()) {
            random = new Random(cases.get(0).seed());
            String first = observeTwin(k, 0, arena).inputsSha256();
            random = new Random(cases.get(0).seed());
            assertThat(observeTwin(k, 0, arena).inputsSha256()).isEqualTo(first);
            random = new Random(cases.get(1).seed());
            assertThat(observeTwin(k, 0, arena).inputsSha256()).isNotEqualTo(first);
        }
    }

    @Test
    void theDecodeCasesMakeThePlannerPickTheVariantsModeOnAnyGpuFrom13To200Sms() {
        for (KernelManifest.Kernel k : MANIFEST.kernels()) {
            for (RegressionScenarios.Plan plan : RegressionScenarios.plans(MANIFEST, k)) {
                if (plan.wantMode() < 0) {
                    continue;
                }
                GpuScenario.Case c = plan.scenario();
                for (int sms : new int[] {13, 28, 46, 58, 82, 108, 114, 132, 144, 170, 200}) {
                    // the extremes of the prompts GpuScenario draws: fewest and most spans, each length, no or widest gaps
                    for (int spans = 1; spans <= c.maxSpans(); spans++) {
                        for (int len : c.spanLengths()) {
                            for (int gap : new int[] {1, 5}) {
                                int mode = plannedMode(c, spans, len, gap, sms, plan.wantMode() == 3);
                                assertThat(mode).as("%s case %s on %d SMs, %d spans of %d", k.name(), c, sms, spans, len)
                                        .isEqualTo(plan.wantMode());
                            }
                        }
                    }
                }
            }
        }
    }

    @Test
    void eachVariantGetsGroupsTheKernelsRouteToIt() {
        // 1-bit decode and min/max ship with 4 and 8 head slots; groups up to 4 go to the 4-slot variant
        KernelManifest.Kernel wide = MANIFEST.kernels().stream().filter(k -> k.function().equals("calibquant_decode")
                && num(k, "HS") == 8 && num(k, "BITS") == 1).findFirst().orElseThrow();
        KernelManifest.Kernel narrow = MANIFEST.kernels().stream().filter(k -> k.function().equals("calibquant_decode")
                && num(k, "HS") == 4 && num(k, "D") == num(wide, "D") && num(k, "MM_MODE") == num(wide, "MM_MODE"))
                .findFirst().orElse(null);
        if (narrow != null) {
            assertThat(RegressionScenarios.groups(MANIFEST, narrow)).containsExactly(4, 3);
            assertThat(RegressionScenarios.groups(MANIFEST, wide)).containsExactly(8, 5);
        } else {
            assertThat(RegressionScenarios.groups(MANIFEST, wide)).containsExactly(4, 3);
        }
        KernelManifest.Kernel quantize = kernel("quantize_pack", 128, 1, -1);
        assertThat(RegressionScenarios.groups(MANIFEST, quantize)).containsExactly(4, 3);
        for (KernelManifest.Kernel k : MANIFEST.kernels()) {
            for (RegressionScenarios.Plan p : RegressionScenarios.plans(MANIFEST, k)) {
                if (p.scenario() != null) {
                    int hs = num(k, "HS") > 0 ? num(k, "HS") : 8;
                    assertThat(p.scenario().group()).as(k.name()).isBetween(1, hs);
                }
            }
        }
    }

    private static int plannedMode(GpuScenario.Case c, int spans, int len, int gap, int sms, boolean oneLaunch) {
        List<DecodePlan.Entry> entries = new ArrayList<>();
        for (int b = 0; b < c.batch(); b++) {
            List<TokenSpan> list = new ArrayList<>();
            int at = c.prefix();
            for (int i = 0; i < spans; i++) {
                list.add(new TokenSpan(at, at + len));
                at += len + (i + 1 < spans ? gap : c.text());
            }
            int full = at - spans * len + c.appends();
            entries.add(new DecodePlan.Entry(0, full, full, list, new long[spans], new long[spans]));
        }
        // the planner's two settings: four-warp Triton kernels (2 programs per SM, no chunk limit), one-warp Gluon
        // kernels (16 per SM, visual chunks <= 832); both must give the same mode
        int triton = DecodePlan.build(entries, c.kvHeads() * c.group(), c.headDim(), c.kvHeads(), c.calibrate(), 2 * sms,
                64, 0).mmMode();
        int gluon = DecodePlan.build(entries, c.kvHeads() * c.group(), c.headDim(), c.kvHeads(), c.calibrate(), 16 * sms,
                64, 832).mmMode();
        assertThat(gluon).isEqualTo(triton);
        if (oneLaunch) {
            // the one-launch kernels (Gluon, CH 512), with the fewest resident programs they may get (8 per SM), a
            // quarter of which one span may use
            return DecodePlan.build(entries, c.kvHeads() * c.group(), c.headDim(), c.kvHeads(), c.calibrate(), 16 * sms,
                    64, 832, new DecodePlan.OneLaunch(512, 2 * sms)).mmMode();
        }
        return triton;
    }

    /** A layer in host memory, as a download gives it. */
    private record HostLayer(int kvHeads, int headDim, DType dtype, int fullTokens, int fullCapacity,
            java.lang.foreign.MemorySegment fullKeys, java.lang.foreign.MemorySegment fullValues,
            List<dev.calibquant.quant.QuantizedSpan> visualSpans) implements dev.calibquant.cache.LayerKvView {}
}
