package dev.calibquant.regression;

import dev.calibquant.gpu.DecodeErrorBound;
import dev.calibquant.selftest.GpuScenario;
import dev.calibquant.selftest.GpuVerification;
import dev.calibquant.selftest.KernelCheck;
import dev.calibquant.selftest.QuantizePackCheck;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.kernels.KernelManifest;
import dev.calibquant.quant.CalibrationPolicy;
import dev.calibquant.quant.QuantizedSpan;
import dev.calibquant.regression.CaseRunner;
import dev.calibquant.regression.CaseSeeds;
import dev.calibquant.regression.CaseSpec;
import dev.calibquant.regression.Observation;
import dev.calibquant.regression.ObservedOutput;
import dev.calibquant.regression.OutputKind;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import java.util.Optional;
import java.util.Random;

/**
 * The regression cases of every shipped kernel variant, chosen from its manifest entry (function and constexprs,
 * never a list of variant names), and their runs on a GPU through the checks {@code selftest} uses: a
 * {@link GpuScenario} shaped so that the variant under test is the one launched, or, for 8-bit
 * {@code quantize_pack}, {@link QuantizePackCheck}'s direct launch. Inputs are drawn from {@code new Random(seed)}
 * with the case's fixed seed ({@link CaseSeeds}), so every machine rebuilds the same ones.
 *
 * <p>Outputs recorded per function: {@code quantize_pack} the codes and scales of every span; the decode-side
 * kernels ({@code calibquant_decode}, {@code calibquant_minmax}, {@code fp16_decode}) the attention output;
 * {@code append_token} the appended rows. The shapes include visual lengths 1, 7 and 255, query groups that are not a
 * power of two (3, or 5 for the variants only groups above 4 reach), several spans per sequence and both
 * calibration policies.
 */
public final class RegressionScenarios implements CaseRunner {
    private static final CalibrationPolicy REF = CalibrationPolicy.REFERENCE;
    private static final CalibrationPolicy CLAMP = CalibrationPolicy.CLAMP_AT_ZERO;

    enum Outputs { QUANTIZED, ATTENTION, APPENDED }

    /** How one case runs: a scenario (with the calibration mode the variant needs, or −1), or an 8-bit launch. */
    record Plan(Outputs outputs, GpuScenario.Case scenario, int wantMode, QuantizePackCheck.Spans spans8) {
        String shape() {
            if (spans8 != null) {
                return "quantize_pack bits8 " + spans8;
            }
            return scenario + " prefix" + scenario.prefix() + " text" + scenario.text();
        }
    }

    private final KernelCatalog catalog;

    /** Runs cases with {@code catalog}'s kernels (its target, its context). */
    public RegressionScenarios(KernelCatalog catalog) {
        this.catalog = catalog;
    }

    /** The cases of {@code manifest}'s variant {@code kernel} (no GPU needed); empty where it is not known here. */
    public static List<CaseSpec> casesFor(KernelManifest manifest, KernelManifest.Kernel kernel) {
        List<Plan> plans = plans(manifest, kernel);
        List<CaseSpec> specs = new ArrayList<>();
        for (int i = 0; i < plans.size(); i++) {
            specs.add(new CaseSpec(i, CaseSeeds.seed(kernel.name(), i), plans.get(i).shape()));
        }
        return specs;
    }

    static List<Plan> plans(KernelManifest manifest, KernelManifest.Kernel k) {
        Integer d = constexpr(k, "D");
        if (k.name().startsWith("x_") || d == null) {
            return List.of();
        }
        Integer bits = constexpr(k, "BITS");
        Integer mode = constexpr(k, "MM_MODE");
        int[] g = groups(manifest, k);
        return switch (k.function()) {
            case "quantize_pack" -> bits == null ? List.of() : bits == 8 ? List.of(
                    new Plan(Outputs.QUANTIZED, null, -1, QuantizePackCheck.DEFAULT_SPANS),
                    new Plan(Outputs.QUANTIZED, null, -1, new QuantizePackCheck.Spans(3, 300, new int[] {0, 9},
                            new int[] {7, 255})))
                    : List.of(
                    scenario(Outputs.QUANTIZED, -1, 2, 2, 3, d, bits, false, REF, new int[] {1, 7, 255}, 3, 5, 9, 1),
                    scenario(Outputs.QUANTIZED, -1, 1, 4, 2, d, bits, false, REF, new int[] {1000}, 1, 41, 64, 1));
            case "calibquant_decode" -> bits == null || mode == null ? List.of() : decodePlans(d, bits, mode, g);
            case "calibquant_minmax" -> bits == null ? List.of() : decodePlans(d, bits, 1, g);
            case "fp16_decode" -> List.of(
                    scenario(Outputs.ATTENTION, -1, 3, 2, g[0], d, 0, false, REF, new int[] {7, 300}, 2, 5, 9, 2),
                    scenario(Outputs.ATTENTION, -1, 2, 1, g[1], d, 0, false, REF, new int[] {1, 255}, 2, 1, 1, 1));
            case "append_token" -> List.of(
                    scenario(Outputs.APPENDED, -1, 3, 2, 4, d, 0, false, REF, new int[] {7, 300}, 2, 5, 9, 3),
                    scenario(Outputs.APPENDED, -1, 5, 3, 1, d, 1, true, REF, new int[] {7}, 1, 2, 4, 2));
            default -> List.of();
        };
    }

    /**
     * Cases that make the planner pick calibration mode {@code mode}: 0 without calibration; 2 with every span at
     * most the planner's smallest chunk (2 blocks of 64 tokens), so each is one work item; 1 with spans longer than
     * the chunk the planner cuts for them on any GPU of 13 SMs or more, with the one-launch mode off (modes 1 and 2
     * run with it off); 3 with the same spans and it on. {@code g}: a typical and an odd group that make the kernels
     * pick this variant.
     */
    private static List<Plan> decodePlans(int d, int bits, int mode, int[] g) {
        return switch (mode) {
            case 0 -> List.of(
                    scenario(Outputs.ATTENTION, 0, 3, 2, g[0], d, bits, false, REF, new int[] {1, 300}, 2, 5, 9, 2),
                    scenario(Outputs.ATTENTION, 0, 2, 1, g[1], d, bits, false, REF, new int[] {7, 255}, 3, 11, 3, 1));
            case 1 -> List.of(
                    scenario(Outputs.ATTENTION, 1, 1, 8, g[0], d, bits, true, REF, new int[] {3328}, 1, 41, 64, 2),
                    scenario(Outputs.ATTENTION, 1, 3, 2, g[1], d, bits, true, CLAMP, new int[] {255}, 3, 7, 1, 1));
            case 2 -> List.of(
                    scenario(Outputs.ATTENTION, 2, 2, 2, g[0], d, bits, true, REF, new int[] {7, 120}, 2, 5, 9, 1),
                    scenario(Outputs.ATTENTION, 2, 3, 2, g[1], d, bits, true, CLAMP, new int[] {1, 7, 127}, 3, 3, 17, 2));
            case 3 -> List.of(
                    scenario(Outputs.ATTENTION, 3, 1, 8, g[0], d, bits, true, REF, new int[] {3328}, 1, 41, 64, 2),
                    scenario(Outputs.ATTENTION, 3, 3, 2, g[1], d, bits, true, CLAMP, new int[] {1, 255, 700}, 3, 7, 1, 1));
            default -> List.of();
        };
    }

    /**
     * {typical, odd} query heads per KV head for which the kernels launch this variant: at most its head slots
     * {@code HS}; above 4 where the manifest also ships the variant with 4 slots (which {@code CalibQuantKernels}
     * picks for groups up to 4). Typical: 4 where allowed, else the most slots; odd: the first of 3, 5, 6, 7 allowed
     * (not a power of two).
     */
    static int[] groups(KernelManifest manifest, KernelManifest.Kernel k) {
        Integer slots = constexpr(k, "HS");
        int hi = slots == null ? 8 : slots;
        boolean narrowSibling = slots != null && slots > 4 && manifest.kernels().stream()
                .anyMatch(o -> o != k && o.function().equals(k.function()) && !o.name().startsWith("x_")
                        && Integer.valueOf(4).equals(constexpr(o, "HS"))
                        && java.util.Objects.equals(constexpr(o, "D"), constexpr(k, "D"))
                        && java.util.Objects.equals(constexpr(o, "BITS"), constexpr(k, "BITS"))
                        && java.util.Objects.equals(constexpr(o, "MM_MODE"), constexpr(k, "MM_MODE")));
        int lo = narrowSibling ? 5 : 1;
        int typical = lo <= 4 && 4 <= hi ? 4 : hi;
        int odd = java.util.stream.IntStream.of(3, 5, 6, 7).filter(x -> lo <= x && x <= hi).findFirst().orElse(typical);
        return new int[] {typical, odd};
    }

    private static Plan scenario(Outputs outputs, int wantMode, int batch, int kvHeads, int group, int d, int bits,
            boolean calibrate, CalibrationPolicy policy, int[] spanLengths, int maxSpans, int prefix, int text,
            int appends) {
        return new Plan(outputs, new GpuScenario.Case(batch, kvHeads, group, d, bits, calibrate, policy, spanLengths,
                maxSpans, prefix, text, appends), wantMode, null);
    }

    private static Integer constexpr(KernelManifest.Kernel k, String name) {
        return k.constexprs().get(name) instanceof Number n ? n.intValue() : null;
    }

    @Override
    public List<CaseSpec> cases(KernelManifest.Kernel kernel) {
        return casesFor(catalog.manifest(), kernel);
    }

    @Override
    public Optional<String> notLoadable(KernelManifest.Kernel kernel) {
        try {
            catalog.kernel(kernel.name());
            return Optional.empty();
        } catch (RuntimeException e) {
            return Optional.of(e.getMessage());
        }
    }

    @Override
    public Observation run(KernelManifest.Kernel kernel, CaseSpec spec) {
        List<Plan> plans = plans(catalog.manifest(), kernel);
        if (spec.index() < 0 || spec.index() >= plans.size() || !plans.get(spec.index()).shape().equals(spec.shape())) {
            throw new IllegalArgumentException(kernel.name() + " has no case " + spec.index() + " of shape " + spec.shape());
        }
        Plan plan = plans.get(spec.index());
        Random random = new Random(spec.seed());
        try {
            Observation o = plan.spans8() != null ? runQuantize8(kernel, plan, random) : runScenario(plan, random);
            catalog.context().synchronize();
            return o;
        } catch (RuntimeException e) {
            return Observation.failed("threw " + e);
        }
    }

    private Observation runScenario(Plan plan, Random random) {
        Observation[] seen = new Observation[1];
        GpuScenario.Result r = GpuScenario.run(catalog.context(), catalog, plan.scenario(), random,
                o -> seen[0] = observe(plan, o), plan.wantMode() != 1 && plan.wantMode() != 2);
        if (seen[0] == null) {
            return Observation.failed(r.passed() ? "the scenario produced no outputs" : r.failure());
        }
        Observation o = seen[0];
        String failure = !r.passed() ? r.failure()
                : plan.wantMode() >= 0 && r.calibrationMode() != plan.wantMode()
                        ? "the scenario ran calibration mode " + r.calibrationMode() + ", not this variant's " + plan.wantMode()
                        : null;
        return new Observation(failure == null, failure, o.inputsSha256(), o.cacheSha256(), o.workItems(),
                o.calibrationMode(), o.outputs());
    }

    static Observation observe(Plan plan, GpuScenario.Observed o) {
        Digest inputs = new Digest();
        for (GpuScenario.Prompt p : o.prompts()) {
            inputs.add(p.tokens());
            p.spans().forEach(s -> inputs.add(s.start()).add(s.end()));
            inputs.add(p.keys()).add(p.values());
        }
        o.appended().forEach(kv -> inputs.add(kv[0]).add(kv[1]));
        inputs.add(o.queries());
        Digest cache = new Digest();
        o.views().forEach(v -> addView(cache, v));
        GpuScenario.Case c = plan.scenario();
        List<ObservedOutput> outputs = switch (plan.outputs()) {
            case ATTENTION -> List.of(attention(o, c));
            case QUANTIZED -> quantized(o, c);
            case APPENDED -> List.of(appended(o, c));
        };
        return new Observation(true, null, inputs.hex(), cache.hex(), o.workItems(), o.calibrationMode(), outputs);
    }

    /** The step's output; per element the run's bound from exact attention over its own cache contents. */
    private static ObservedOutput attention(GpuScenario.Observed o, GpuScenario.Case c) {
        int d = c.headDim();
        int hq = c.kvHeads() * c.group();
        float[] values = new float[c.batch() * hq * d];
        double[] tol = new double[values.length];
        for (int b = 0; b < c.batch(); b++) {
            for (int h = 0; h < hq; h++) {
                int row = (b * hq + h) * d;
                double t = DecodeErrorBound.attentionTolerance(Arrays.copyOfRange(o.queries(), row, row + d),
                        o.views().get(b), o.workItems(), o.block());
                for (int j = 0; j < d; j++) {
                    values[row + j] = o.gpuOut().getAtIndex(ValueLayout.JAVA_FLOAT, row + j);
                    tol[row + j] = t;
                }
            }
        }
        return new ObservedOutput("attention", OutputKind.ATTENTION, values, tol);
    }

    /** Every span's codes (keys then values) and scales (σK, αK, σV, αV), sequence by sequence. */
    private static List<ObservedOutput> quantized(GpuScenario.Observed o, GpuScenario.Case c) {
        Elements codes = new Elements();
        Elements scales = new Elements();
        for (int b = 0; b < c.batch(); b++) {
            GpuScenario.Prompt p = o.prompts().get(b);
            List<QuantizedSpan> spans = o.views().get(b).visualSpans();
            for (int i = 0; i < spans.size(); i++) {
                QuantizedSpan s = spans.get(i);
                int start = p.spans().get(i).start();
                addCodes(codes, s.keyCodes(), s.keyScale(), s.keyOffset(), p.keys(), p.tokens(), start, s);
                addCodes(codes, s.valueCodes(), s.valueScale(), s.valueOffset(), p.values(), p.tokens(), start, s);
                for (MemorySegment m : new MemorySegment[] {s.keyScale(), s.keyOffset(), s.valueScale(), s.valueOffset()}) {
                    addScales(scales, m);
                }
            }
        }
        return List.of(codes.output("codes", OutputKind.CODES), scales.output("scales", OutputKind.SCALES));
    }

    /** The rows {@code append_token} wrote: the last {@code appends} full-precision rows of every head, K then V. */
    private static ObservedOutput appended(GpuScenario.Observed o, GpuScenario.Case c) {
        Elements rows = new Elements();
        int d = c.headDim();
        for (LayerKvView v : o.views()) {
            for (MemorySegment pool : new MemorySegment[] {v.fullKeys(), v.fullValues()}) {
                for (int h = 0; h < v.kvHeads(); h++) {
                    for (int r = v.fullTokens() - c.appends(); r < v.fullTokens(); r++) {
                        for (int j = 0; j < d; j++) {
                            long at = 2 * (((long) h * v.fullCapacity() + r) * d + j);
                            rows.add(Float.float16ToFloat(pool.get(ValueLayout.JAVA_SHORT_UNALIGNED, at)), 0);
                        }
                    }
                }
            }
        }
        return rows.output("appended", OutputKind.EXACT);
    }

    /** Codes of one span, {@code [kvh][tokens][D]} unpacked; bound 1 where the input sits at a rounding tie. */
    private static void addCodes(Elements into, MemorySegment packed, MemorySegment sigma, MemorySegment alpha,
            float[] prompt, int promptTokens, int start, QuantizedSpan s) {
        int bits = s.bits();
        int levels = (1 << bits) - 1;
        int perByte = 8 / bits;
        int d = s.headDim();
        int rowBytes = d * bits / 8;
        for (int h = 0; h < s.kvHeads(); h++) {
            for (int t = 0; t < s.tokens(); t++) {
                for (int j = 0; j < d; j++) {
                    long byteAt = ((long) h * s.tokens() + t) * rowBytes + j / perByte;
                    int shift = bits * (perByte - 1 - j % perByte);
                    int code = (packed.get(ValueLayout.JAVA_BYTE, byteAt) >> shift) & levels;
                    float x = prompt[(h * promptTokens + start + t) * d + j];
                    boolean tie = GpuVerification.nearRoundingBoundary(x,
                            sigma.getAtIndex(ValueLayout.JAVA_FLOAT, (long) h * d + j),
                            alpha.getAtIndex(ValueLayout.JAVA_FLOAT, (long) h * d + j), levels);
                    into.add(code, tie ? 1 : 0);
                }
            }
        }
    }

    /** fp32 scales; bound 2·2 ulps of the value (2 ulps from the CPU quantizer, ×2 for a binade crossing). */
    private static void addScales(Elements into, MemorySegment scales) {
        for (long i = 0; i < scales.byteSize() / 4; i++) {
            float x = scales.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            into.add(x, 2 * GpuVerification.SCALE_ULPS * Math.ulp(Math.max(Math.abs(x), Float.MIN_NORMAL)));
        }
    }

    private Observation runQuantize8(KernelManifest.Kernel kernel, Plan plan, Random random) {
        Observation[] seen = new Observation[1];
        int d = constexpr(kernel, "D");
        KernelCheck.Result r = QuantizePackCheck.run(catalog, kernel, random, plan.spans8(), o -> seen[0] = observe8(o, d));
        if (seen[0] == null) {
            return Observation.failed(r.detail());
        }
        Observation o = seen[0];
        return new Observation(r.passed(), r.passed() ? null : r.detail(), o.inputsSha256(), null, 0, -1, o.outputs());
    }

    /** Codes (bytes at 8 bits) and scales of each span, keys then values, as {@link #quantized} orders them. */
    static Observation observe8(QuantizePackCheck.Observed o, int d) {
        QuantizePackCheck.Spans layout = o.spans();
        int kvh = layout.kvHeads();
        Digest inputs = new Digest().add(o.keys()).add(o.values());
        Elements codes = new Elements();
        Elements scales = new Elements();
        for (int i = 0; i < layout.lengths().length; i++) {
            MemorySegment[] sc = o.scales().get(i);
            float[][] x = {o.keys(), o.values()};
            for (int kv = 0; kv < 2; kv++) {
                MemorySegment c = o.codes().get(i)[kv];
                for (int h = 0; h < kvh; h++) {
                    for (int t = 0; t < layout.lengths()[i]; t++) {
                        for (int j = 0; j < d; j++) {
                            int code = c.get(ValueLayout.JAVA_BYTE, ((long) h * layout.lengths()[i] + t) * d + j) & 0xff;
                            float xv = x[kv][(h * layout.prompt() + layout.starts()[i] + t) * d + j];
                            boolean tie = GpuVerification.nearRoundingBoundary(xv,
                                    sc[2 * kv].getAtIndex(ValueLayout.JAVA_FLOAT, (long) h * d + j),
                                    sc[2 * kv + 1].getAtIndex(ValueLayout.JAVA_FLOAT, (long) h * d + j), 255);
                            codes.add(code, tie ? 1 : 0);
                        }
                    }
                }
            }
            for (MemorySegment m : sc) {
                addScales(scales, m);
            }
        }
        return new Observation(true, null, inputs.hex(), null, 0, -1,
                List.of(codes.output("codes", OutputKind.CODES), scales.output("scales", OutputKind.SCALES)));
    }

    private static void addView(Digest digest, LayerKvView v) {
        int d = v.headDim();
        for (MemorySegment pool : new MemorySegment[] {v.fullKeys(), v.fullValues()}) {
            for (int h = 0; h < v.kvHeads(); h++) {
                long from = 2L * h * v.fullCapacity() * d;
                digest.add(pool.asSlice(from, 2L * v.fullTokens() * d));
            }
        }
        for (QuantizedSpan s : v.visualSpans()) {
            for (MemorySegment m : new MemorySegment[] {s.keyCodes(), s.valueCodes(), s.keyScale(), s.keyOffset(),
                s.valueScale(), s.valueOffset()}) {
                digest.add(m);
            }
        }
    }

    /** A growing list of output elements with their bounds. */
    private static final class Elements {
        private float[] values = new float[1024];
        private double[] tolerance = new double[1024];
        private int size;

        void add(float value, double bound) {
            if (size == values.length) {
                values = Arrays.copyOf(values, 2 * size);
                tolerance = Arrays.copyOf(tolerance, 2 * size);
            }
            values[size] = value;
            tolerance[size++] = bound;
        }

        ObservedOutput output(String name, OutputKind kind) {
            return new ObservedOutput(name, kind, Arrays.copyOf(values, size), Arrays.copyOf(tolerance, size));
        }
    }

    /** SHA-256 over ints, floats (IEEE bits) and raw bytes, in the order given. */
    private static final class Digest {
        private final MessageDigest sha;

        Digest() {
            try {
                sha = MessageDigest.getInstance("SHA-256");
            } catch (NoSuchAlgorithmException e) {
                throw new IllegalStateException("SHA-256 is missing from this JDK", e);
            }
        }

        Digest add(int x) {
            sha.update(new byte[] {(byte) (x >>> 24), (byte) (x >>> 16), (byte) (x >>> 8), (byte) x});
            return this;
        }

        Digest add(float[] x) {
            byte[] b = new byte[4 * x.length];
            for (int i = 0; i < x.length; i++) {
                int v = Float.floatToRawIntBits(x[i]);
                b[4 * i] = (byte) (v >>> 24);
                b[4 * i + 1] = (byte) (v >>> 16);
                b[4 * i + 2] = (byte) (v >>> 8);
                b[4 * i + 3] = (byte) v;
            }
            sha.update(b);
            return add(x.length);
        }

        Digest add(MemorySegment bytes) {
            sha.update(bytes.toArray(ValueLayout.JAVA_BYTE));
            return add((int) bytes.byteSize());
        }

        String hex() {
            return HexFormat.of().formatHex(sha.digest());
        }
    }
}
