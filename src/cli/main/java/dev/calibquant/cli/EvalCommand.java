package dev.calibquant.cli;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.calibquant.attention.CpuCalibQuantAttention;
import dev.calibquant.attention.CpuExactAttention;
import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.attention.ReferenceAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.io.SafetensorsFormatException;
import dev.calibquant.io.SafetensorsReader;
import dev.calibquant.io.SafetensorsTensor;
import dev.calibquant.io.SafetensorsWriter;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.ClipAnchor;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import java.io.IOException;
import java.io.PrintWriter;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.NoSuchElementException;
import java.util.Random;
import java.util.concurrent.Callable;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/**
 * {@code calibquant eval}: how far CalibQuant decode attention is from exact attention on a captured KV cache.
 *
 * <p>For every layer of the capture, the visual spans are quantized through the {@link KvCacheManager} at each code
 * width, with calibration on and off, and one decode step of {@link CpuCalibQuantAttention} is compared with
 * {@link ReferenceAttention} (double precision) over the unquantized cache. A first row per layer does the same for
 * {@link CpuExactAttention} over the unquantized cache: the fp32 arithmetic floor.
 *
 * <p>Exit codes: 0 done, 1 the file is not a usable capture (the message says why), 2 bad command-line usage.
 */
@Command(name = "eval", mixinStandardHelpOptions = true,
        description = {"Measures CalibQuant decode attention against exact attention on a captured KV cache.",
            "FILE is safetensors: per layer i, layers.{i}.k and layers.{i}.v [kv_heads, tokens, head_dim] (F16, BF16 "
                + "or F32), layers.{i}.q [q_heads, head_dim]; metadata visual_spans = JSON [[start, end], ...] "
                + "(token positions, end exclusive).",
            "Per layer, code width, clip (the paper's toward zero, and about each channel's midpoint) and "
                + "calibration on/off it prints the relative error ||o - o_exact|| / ||o_exact|| of the attention "
                + "output, its largest absolute error, and the bytes the layer's cache stores next to fp16. With 1 and 2 "
                + "among the widths, also 2-bit keys (full range) with 1-bit values clipped about the midpoint (rows "
                + "'k2 v1 mid C'); with 1 among them, 1 bit about the midpoint with fp16 offsets and scales and 0, 1/4, "
                + "1/2, 3/4 or all key channels of each head (the widest) at 2 bits (rows '1-bit mid C f16 wN').",
            "With --error-budget it recommends, per layer, the setting that stores the fewest bytes within it."})
public final class EvalCommand implements Callable<Integer> {

    @Parameters(arity = "0..1", paramLabel = "FILE", description = "the capture to evaluate")
    Path file;

    @Option(names = "--json", description = "print JSON instead of a table")
    boolean json;

    @Option(names = "--bits", split = ",", paramLabel = "BITS", defaultValue = "1,2,4",
            description = "code widths to evaluate, from 1, 2, 4, 8 (default: ${DEFAULT-VALUE})")
    List<Integer> bits;

    @Option(names = "--midpoint-clips", split = ",", paramLabel = "C", defaultValue = "0.7",
            description = "also quantize every width clipping about each channel's midpoint by these factors, in "
                    + "(0, 1] (default: ${DEFAULT-VALUE}; 'none' for no such rows)")
    List<String> midpointClips;

    @Option(names = "--error-budget", paramLabel = "R", description = "recommend, per layer, the setting with the "
            + "fewest stored bytes whose relative error is at most R, in (0, 1] (e.g. 0.05)")
    Double errorBudget;

    @Option(names = "--make-example", paramLabel = "OUT",
            description = "write a synthetic capture to OUT and exit: " + ExampleCapture.DESCRIPTION)
    Path example;

    @Option(names = "--seed", defaultValue = "2502", description = "random seed of --make-example "
            + "(default: ${DEFAULT-VALUE})")
    long seed;

    @Spec
    CommandSpec spec;

    /** Bad command-line usage: exit code 2. */
    private static final class UsageException extends Exception {
        UsageException(String message) {
            super(message);
        }
    }

    /** A file that is not a usable capture: exit code 1. */
    static final class CaptureException extends Exception {
        CaptureException(String message) {
            super(message);
        }
    }

    @Override
    public Integer call() {
        PrintWriter out = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        try {
            if (example != null) {
                if (file != null) {
                    throw new UsageException("give FILE or --make-example OUT, not both");
                }
                ExampleCapture.write(example, seed, ExampleCapture.DEFAULT);
                out.println("wrote " + example + ": " + ExampleCapture.DESCRIPTION + ", seed " + seed);
                return 0;
            }
            if (file == null) {
                throw new UsageException("missing FILE (or --make-example OUT)");
            }
            for (int b : bits) {
                if (b != 1 && b != 2 && b != 4 && b != 8) {
                    throw new UsageException("--bits takes 1, 2, 4 or 8, got " + b);
                }
            }
            List<Float> clips = midpointClips();
            if (errorBudget != null && !(errorBudget > 0 && errorBudget <= 1)) {
                throw new UsageException("--error-budget takes a relative error in (0, 1], got " + errorBudget);
            }
            // a FIFO or a device would block or stream forever: only a regular file is a capture
            java.util.Optional<String> notAFile = dev.calibquant.io.InputFile.whyNotARegularFile(file);
            if (notAFile.isPresent()) {
                throw new CaptureException(notAFile.get() + ", not a safetensors capture");
            }
            try (SafetensorsReader reader = SafetensorsReader.open(file)) {
                Capture capture = Capture.read(reader);
                List<Row> rows = evaluate(capture, bits.stream().distinct().sorted().toList(), clips);
                List<Advice> advice = errorBudget == null ? List.of() : advise(rows, errorBudget);
                if (json) {
                    out.println(toJson(capture, rows, advice, errorBudget));
                } else {
                    printTable(out, capture, rows);
                    printAdvice(out, advice, errorBudget);
                }
            }
            out.flush();
            return 0;
        } catch (UsageException e) {
            err.println("calibquant eval: " + e.getMessage());
            spec.commandLine().usage(err);
            return 2;
        } catch (CaptureException | SafetensorsFormatException e) {
            err.println("calibquant eval: " + e.getMessage());
            return 1;
        } catch (NoSuchFileException e) {
            err.println("calibquant eval: no such file: " + e.getFile());
            return 1;
        } catch (IOException e) {
            err.println("calibquant eval: cannot read " + file + ": " + CalibQuantCli.oneLine(e));
            return 1;
        } catch (IllegalArgumentException e) {
            // the cache's or the attention's check of the data: a NaN, a span out of range, an impossible shape
            err.println("calibquant eval: " + file + ": " + e.getMessage());
            return 1;
        }
    }

    /** A capture file's layers, checked: one geometry, one dtype for keys and values, visual spans in range. */
    record Capture(Path path, ModelGeometry geometry, int tokens, DType kvType, DType queryType,
            List<TokenSpan> spans, List<SafetensorsTensor> keys, List<SafetensorsTensor> values,
            List<SafetensorsTensor> queries) {

        private static final Pattern LAYER_TENSOR = Pattern.compile("layers\\.(\\d+)\\.(k|v|q)");

        static Capture read(SafetensorsReader reader) throws CaptureException {
            Path path = reader.path();
            int layers = 0;
            while (reader.contains("layers." + layers + ".k")) {
                layers++;
            }
            if (layers == 0) {
                throw new CaptureException(path + " has no tensor layers.0.k");
            }
            for (String name : reader.names()) {
                Matcher m = LAYER_TENSOR.matcher(name);
                if (m.matches() && Long.parseLong(m.group(1)) >= layers) {
                    throw new CaptureException(path + " has " + name + " but no layers." + layers + ".k");
                }
            }
            List<SafetensorsTensor> keys = new ArrayList<>();
            List<SafetensorsTensor> values = new ArrayList<>();
            List<SafetensorsTensor> queries = new ArrayList<>();
            for (int l = 0; l < layers; l++) {
                keys.add(tensor(reader, "layers." + l + ".k"));
                values.add(tensor(reader, "layers." + l + ".v"));
                queries.add(tensor(reader, "layers." + l + ".q"));
            }
            SafetensorsTensor k0 = keys.get(0);
            SafetensorsTensor q0 = queries.get(0);
            if (k0.rank() != 3) {
                throw new CaptureException(path + ": " + k0 + " is not [kv_heads, tokens, head_dim]");
            }
            if (q0.rank() != 2) {
                throw new CaptureException(path + ": " + q0 + " is not [q_heads, head_dim]");
            }
            for (int l = 0; l < layers; l++) {
                sameShape(path, keys.get(l), k0);
                sameShape(path, values.get(l), k0);
                sameShape(path, queries.get(l), q0);
            }
            int kvHeads = positiveInt(path, k0, 0);
            int tokens = positiveInt(path, k0, 1);
            int headDim = positiveInt(path, k0, 2);
            int queryHeads = positiveInt(path, q0, 0);
            if (q0.dim(1) != headDim) {
                throw new CaptureException(path + ": " + q0 + " has head dim " + q0.dim(1) + " but the keys have "
                        + headDim);
            }
            if (queryHeads % kvHeads != 0) {
                throw new CaptureException(path + ": " + queryHeads + " query heads are not a multiple of " + kvHeads
                        + " KV heads");
            }
            ModelGeometry geometry = new ModelGeometry(layers, queryHeads, kvHeads, headDim);
            List<TokenSpan> spans = spans(path, reader.metadata().get("visual_spans"), tokens);
            return new Capture(path, geometry, tokens, k0.dtype(), q0.dtype(), spans, keys, values, queries);
        }

        private static SafetensorsTensor tensor(SafetensorsReader reader, String name) throws CaptureException {
            try {
                return reader.tensor(name);
            } catch (NoSuchElementException e) {
                throw new CaptureException(e.getMessage());
            }
        }

        private static void sameShape(Path path, SafetensorsTensor t, SafetensorsTensor like)
                throws CaptureException {
            if (!Arrays.equals(t.shape(), like.shape()) || t.dtype() != like.dtype()) {
                throw new CaptureException(path + ": " + t + " differs from " + like);
            }
        }

        private static int positiveInt(Path path, SafetensorsTensor t, int axis) throws CaptureException {
            long d = t.dim(axis);
            if (d <= 0 || d > Integer.MAX_VALUE) {
                throw new CaptureException(path + ": " + t + " has dimension " + axis + " of " + d);
            }
            return (int) d;
        }

        private static List<TokenSpan> spans(Path path, String text, int tokens) throws CaptureException {
            if (text == null) {
                throw new CaptureException(path + " has no metadata visual_spans (a JSON list of [start, end] pairs)");
            }
            JsonNode root;
            try {
                // one JSON value and nothing after it: "[[11, 267]] junk" is refused, not read as its prefix
                root = new ObjectMapper().enable(com.fasterxml.jackson.databind.DeserializationFeature
                        .FAIL_ON_TRAILING_TOKENS).readTree(text);
            } catch (JsonProcessingException e) {
                throw new CaptureException(path + ": metadata visual_spans is not one JSON value: "
                        + e.getOriginalMessage());
            }
            if (root == null || !root.isArray() || root.isEmpty()) {
                throw new CaptureException(path + ": metadata visual_spans must be a non-empty JSON list of "
                        + "[start, end] pairs, got " + text);
            }
            List<TokenSpan> spans = new ArrayList<>();
            for (JsonNode pair : root) {
                if (!pair.isArray() || pair.size() != 2 || !pair.get(0).isIntegralNumber()
                        || !pair.get(1).isIntegralNumber()) {
                    throw new CaptureException(path + ": metadata visual_spans holds " + pair
                            + ", not a [start, end] pair of integers");
                }
                if (!pair.get(0).canConvertToInt() || !pair.get(1).canConvertToInt()) {
                    throw new CaptureException(path + ": metadata visual_spans holds " + pair
                            + ": token positions must be from 0 to " + Integer.MAX_VALUE);
                }
                try {
                    spans.add(new TokenSpan(pair.get(0).intValue(), pair.get(1).intValue()));
                } catch (IllegalArgumentException e) {
                    throw new CaptureException(path + ": " + e.getMessage());
                }
            }
            try {
                return TokenSpan.sortedWithin(spans, tokens);
            } catch (IllegalArgumentException e) {
                throw new CaptureException(path + ": " + e.getMessage());
            }
        }
    }

    /** The --midpoint-clips factors, checked: none for "none". */
    private List<Float> midpointClips() throws UsageException {
        if (midpointClips.size() == 1 && midpointClips.getFirst().equals("none")) {
            return List.of();
        }
        List<Float> clips = new ArrayList<>();
        for (String c : midpointClips) {
            float f;
            try {
                f = Float.parseFloat(c);
            } catch (NumberFormatException e) {
                throw new UsageException("--midpoint-clips takes factors in (0, 1] or 'none', got "
                        + BenchCommand.printable(c));
            }
            if (!(f > 0 && f <= 1)) {
                throw new UsageException("--midpoint-clips takes factors in (0, 1], got " + c);
            }
            clips.add(f);
        }
        return clips.stream().distinct().sorted().toList();
    }

    /**
     * One line of the report; {@code bits} 0 is the unquantized cache; {@code valueBits} the values' width (see
     * {@link Setting}); {@code midpointClip} 0 is the paper's clip toward zero (the width's defaults), otherwise both
     * keys and values clipped about each channel's midpoint.
     */
    record Row(int layer, Setting setting, boolean calibration, double relativeError, double maxAbsError,
            long storedBytes, long fp16Bytes) {

        int bits() {
            return setting == null ? 0 : setting.bits();
        }

        String cache() {
            return setting == null ? "unquantized" : setting.name();
        }

        /** The quantization this row measured, or null for the unquantized cache. */
        QuantConfig config() {
            return setting == null ? null : setting.config(calibration);
        }
    }

    /** The recommendation for one layer: the smallest setting within the budget, or none (keep fp16). */
    record Advice(int layer, Row choice, Row bestOutside) {}

    /**
     * Per layer, of the quantized rows whose relative error is within {@code budget}, the one storing the fewest
     * bytes (the smaller error on a tie); where none is, the layer stays unquantized and the closest row is named.
     */
    static List<Advice> advise(List<Row> rows, double budget) {
        List<Advice> advice = new ArrayList<>();
        for (int layer : rows.stream().mapToInt(Row::layer).distinct().toArray()) {
            List<Row> quantized = rows.stream().filter(r -> r.layer() == layer && r.bits() > 0).toList();
            java.util.Comparator<Row> smallest = java.util.Comparator.comparingLong(Row::storedBytes)
                    .thenComparingDouble(Row::relativeError);
            Row choice = quantized.stream().filter(r -> r.relativeError() <= budget).min(smallest).orElse(null);
            Row outside = quantized.stream().filter(r -> r.relativeError() > budget
                    && (choice == null || r.storedBytes() < choice.storedBytes()))
                    .min(java.util.Comparator.comparingDouble(Row::relativeError)).orElse(null);
            advice.add(new Advice(layer, choice, outside));
        }
        return advice;
    }

    private static void printAdvice(PrintWriter out, List<Advice> advice, Double budget) {
        if (budget == null) {
            return;
        }
        out.println();
        out.printf(Locale.ROOT, "Recommendation for a relative error of at most %.3g per layer (the fewest stored "
                + "bytes within it):%n", budget);
        for (Advice a : advice) {
            if (a.choice() == null) {
                out.printf(Locale.ROOT, "  layer %d: keep fp16: no setting is within %.3g (the closest, %s, "
                        + "calibration %s, has %.3e)%n", a.layer(), budget, a.bestOutside().cache(),
                        a.bestOutside().calibration() ? "on" : "off", a.bestOutside().relativeError());
                continue;
            }
            Row c = a.choice();
            out.printf(Locale.ROOT, "  layer %d: %s, calibration %s: rel. error %.3e, %.2fx fewer bytes than fp16",
                    a.layer(), c.cache(), c.calibration() ? "on" : "off", c.relativeError(),
                    (double) c.fp16Bytes() / c.storedBytes());
            if (a.bestOutside() != null) {
                Row o = a.bestOutside();
                out.printf(Locale.ROOT, "; smaller settings miss the budget (best of them: %s, calibration %s, "
                        + "%.3e)", o.cache(), o.calibration() ? "on" : "off", o.relativeError());
            }
            out.println();
        }
    }

    /**
     * A quantized cache to evaluate: a code width and its clip ({@code midpointClip} 0: the width's defaults); or,
     * where {@code valueBits} differs from {@code bits}, keys over their full range at {@code bits} and values at
     * {@code valueBits} clipped about each channel's midpoint. {@code halfParams}: offsets and scales in fp16, with
     * {@code wideKeys} key channels per head at 2 bits (1-bit spans about the midpoint only).
     */
    record Setting(int bits, int valueBits, float midpointClip, boolean halfParams, int wideKeys) {
        Setting(int bits, int valueBits, float midpointClip) {
            this(bits, valueBits, midpointClip, false, 0);
        }

        QuantConfig config(boolean calibrate) {
            QuantConfig c = QuantConfig.defaults(bits).withCalibrate(calibrate);
            if (valueBits != bits) {
                return c.withValueBits(valueBits).withKeyClip(1f).withValueClip(midpointClip)
                        .withClipAnchor(ClipAnchor.MIDPOINT);
            }
            c = midpointClip == 0 ? c : c.withKeyClip(midpointClip).withValueClip(midpointClip)
                    .withClipAnchor(ClipAnchor.MIDPOINT);
            return halfParams ? c.withParamType(DType.FP16).withWideKeyChannels(wideKeys) : c;
        }

        String name() {
            if (valueBits != bits) {
                return "k" + bits + " v" + valueBits + " mid " + midpointClip;
            }
            return bits + "-bit" + (midpointClip == 0 ? "" : " mid " + midpointClip) + (halfParams ? " f16" : "")
                    + (wideKeys > 0 ? " w" + wideKeys : "");
        }
    }

    /**
     * Fills one unquantized sequence and one quantized sequence per setting from the capture (every width at its
     * defaults, then every width clipped about each channel's midpoint by each clip), then compares one decode step
     * per layer and setting, calibrated and not, with the double-precision reference over the unquantized cache.
     */
    static List<Row> evaluate(Capture c, List<Integer> bitsList, List<Float> midpointClips) {
        List<Setting> settings = new ArrayList<>();
        for (int b : bitsList) {
            settings.add(new Setting(b, b, 0f));
        }
        for (int b : bitsList) {
            for (float clip : midpointClips) {
                settings.add(new Setting(b, b, clip));
            }
        }
        if (bitsList.contains(1) && bitsList.contains(2)) { // keys are what attention is most sensitive to
            for (float clip : midpointClips) {
                settings.add(new Setting(2, 1, clip));
            }
        }
        ModelGeometry g = c.geometry();
        if (bitsList.contains(1)) { // fp16 parameters, and 0, 1/4, 1/2, 3/4 or all key channels at 2 bits
            for (float clip : midpointClips) {
                java.util.SortedSet<Integer> wide = new java.util.TreeSet<>();
                for (int quarter = 0; quarter <= 4; quarter++) {
                    wide.add(g.headDim() * quarter / 4 / 8 * 8);
                }
                for (int w : wide) {
                    settings.add(new Setting(1, 1, clip, true, w));
                }
            }
        }
        List<Row> rows = new ArrayList<>();
        List<Sequence> sequences = new ArrayList<>();
        try (KvCacheManager cache = KvCacheManager.onHost(g, c.kvType()); Arena arena = Arena.ofConfined()) {
            try {
                Sequence exact = fill(cache.createSequence(c.tokens()).label("the capture in fp16"), c, sequences);
                List<Sequence> quantized = new ArrayList<>();
                for (Setting setting : settings) {
                    quantized.add(fill(cache.createSequence(c.tokens(), c.spans(), setting.config(true))
                            .label("the capture, " + setting.name()), c, sequences));
                }
                long fp16Bytes = 2L * g.kvHeads() * c.tokens() * g.headDim() * 2;
                DecodeAttention reference = new ReferenceAttention(Calibration.OFF);
                for (int l = 0; l < g.layers(); l++) {
                    LayerKvView exactView = exact.layer(l);
                    MemorySegment query = c.queries().get(l).data();
                    float[] expected = decode(reference, exactView, query, c, arena);
                    float[] floor = decode(new CpuExactAttention(), exactView, query, c, arena);
                    rows.add(row(l, null, false, floor, expected, storedBytes(exactView), fp16Bytes));
                    for (int i = 0; i < settings.size(); i++) {
                        Setting setting = settings.get(i);
                        LayerKvView view = quantized.get(i).layer(l);
                        for (boolean calibrate : new boolean[] {true, false}) {
                            Calibration calibration = setting.config(calibrate).calibration();
                            float[] actual = decode(new CpuCalibQuantAttention(calibration), view, query, c, arena);
                            rows.add(row(l, setting, calibrate, actual, expected, storedBytes(view), fp16Bytes));
                        }
                    }
                }
            } finally {
                sequences.forEach(Sequence::close);
            }
        }
        return rows;
    }

    private static Sequence fill(Sequence sequence, Capture c, List<Sequence> owned) {
        owned.add(sequence);
        for (int l = 0; l < c.geometry().layers(); l++) {
            sequence.fill(l, c.keys().get(l).data(), c.values().get(l).data(), c.kvType());
        }
        return sequence;
    }

    private static float[] decode(DecodeAttention attention, LayerKvView view, MemorySegment query, Capture c,
            Arena arena) {
        int elements = c.geometry().queryHeads() * c.geometry().headDim();
        MemorySegment out = arena.allocate((long) elements * Float.BYTES, Float.BYTES);
        attention.decode(List.of(view), query, c.queryType(), c.geometry().queryHeads(), out);
        float[] result = new float[elements];
        for (int i = 0; i < elements; i++) {
            result[i] = Elements.read(out, DType.FP32, i);
        }
        return result;
    }

    /** Bytes the layer's tokens take: full-precision rows held (not the spare capacity) plus codes and scales. */
    private static long storedBytes(LayerKvView view) {
        long bytes = 2L * view.kvHeads() * view.fullTokens() * view.headDim() * view.dtype().byteSize();
        for (QuantizedSpan s : view.visualSpans()) {
            bytes += s.keyCodes().byteSize() + s.valueCodes().byteSize() + s.keyScale().byteSize()
                    + s.keyOffset().byteSize() + s.valueScale().byteSize() + s.valueOffset().byteSize();
            if (s.wideKeys() != null) {
                bytes += s.wideKeys().mask().byteSize() + s.wideKeys().lowBits().byteSize();
            }
        }
        return bytes;
    }

    private static Row row(int layer, Setting setting, boolean calibration, float[] actual, float[] expected,
            long storedBytes, long fp16Bytes) {
        double diff = 0;
        double norm = 0;
        double maxAbs = 0;
        for (int i = 0; i < actual.length; i++) {
            double e = (double) actual[i] - expected[i];
            diff += e * e;
            norm += (double) expected[i] * expected[i];
            maxAbs = Math.max(maxAbs, Math.abs(e));
        }
        // an output equal to an exact zero (a layer of zero values) has no error; 0/0 would report NaN
        double relative = diff == 0 ? 0 : Math.sqrt(diff / norm);
        return new Row(layer, setting, calibration, relative, maxAbs, storedBytes, fp16Bytes);
    }

    private static void printTable(PrintWriter out, Capture c, List<Row> rows) {
        ModelGeometry g = c.geometry();
        int visual = c.spans().stream().mapToInt(TokenSpan::length).sum();
        out.printf(Locale.ROOT, "%s: %d layers, %d query heads, %d KV heads, head dim %d; %d tokens of %s, "
                + "visual spans %s (%d tokens)%n", c.path(), g.layers(), g.queryHeads(), g.kvHeads(), g.headDim(),
                c.tokens(), c.kvType(), c.spans().stream().map(TokenSpan::toString).collect(
                        java.util.stream.Collectors.joining(", ")), visual);
        out.println("Error of one decode step against exact attention (double precision, unquantized cache).");
        out.println();
        out.printf(Locale.ROOT, "%5s  %-21s  %-11s  %10s  %13s  %12s  %12s  %8s%n", "layer", "cache", "calibration",
                "rel. error", "max abs error", "stored bytes", "fp16 bytes", "vs fp16");
        for (Row r : rows) {
            out.printf(Locale.ROOT, "%5d  %-21s  %-11s  %10.3e  %13.3e  %12d  %12d  %7.2fx%n", r.layer(), r.cache(),
                    r.bits() == 0 ? "-" : r.calibration() ? "on" : "off", r.relativeError(), r.maxAbsError(),
                    r.storedBytes(), r.fp16Bytes(), (double) r.fp16Bytes() / r.storedBytes());
        }
    }

    private static String toJson(Capture c, List<Row> rows, List<Advice> advice, Double budget) {
        ObjectMapper mapper = new ObjectMapper();
        ObjectNode root = mapper.createObjectNode();
        ModelGeometry g = c.geometry();
        root.put("file", c.path().toString());
        root.put("layers", g.layers());
        root.put("queryHeads", g.queryHeads());
        root.put("kvHeads", g.kvHeads());
        root.put("headDim", g.headDim());
        root.put("tokens", c.tokens());
        root.put("kvDtype", c.kvType().name());
        root.put("queryDtype", c.queryType().name());
        ArrayNode spans = root.putArray("visualSpans");
        for (TokenSpan s : c.spans()) {
            spans.addArray().add(s.start()).add(s.end());
        }
        root.put("exact", "ReferenceAttention (double precision) over the unquantized cache");
        ArrayNode results = root.putArray("results");
        for (Row r : rows) {
            ObjectNode n = results.addObject();
            n.put("layer", r.layer());
            n.put("cache", r.cache());
            if (r.bits() == 0) {
                n.putNull("bits");
                n.putNull("calibration");
            } else {
                QuantConfig q = r.config();
                n.put("bits", q.bits());
                n.put("valueBits", q.valueBits());
                n.put("calibration", r.calibration());
                n.put("clipAnchor", q.clipAnchor().name());
                n.put("keyClip", q.keyClip());
                n.put("valueClip", q.valueClip());
                n.put("paramType", q.paramType().name());
                n.put("wideKeyChannels", q.wideKeyChannels());
            }
            n.put("relativeError", r.relativeError());
            n.put("maxAbsError", r.maxAbsError());
            n.put("storedBytes", r.storedBytes());
            n.put("fp16Bytes", r.fp16Bytes());
        }
        if (budget != null) {
            root.put("errorBudget", budget);
            ArrayNode rec = root.putArray("recommendation");
            for (Advice a : advice) {
                ObjectNode n = rec.addObject();
                n.put("layer", a.layer());
                if (a.choice() == null) {
                    n.put("cache", "unquantized");
                } else {
                    n.put("cache", a.choice().cache());
                    n.put("calibration", a.choice().calibration());
                    n.put("relativeError", a.choice().relativeError());
                    n.put("storedBytes", a.choice().storedBytes());
                }
            }
        }
        try {
            return mapper.writerWithDefaultPrettyPrinter().writeValueAsString(root);
        } catch (JsonProcessingException e) {
            throw new IllegalStateException("cannot print the report as JSON", e);
        }
    }

    /**
     * A synthetic capture shaped like InternVL2.5-8B's language model on one 13-tile image: random normal fp16 keys
     * with a few channels per KV head scaled ×8 (the outlier channels real keys have), random normal values and
     * queries.
     */
    static final class ExampleCapture {

        record Shape(int layers, int kvHeads, int queryHeads, int headDim, int prefix, int visual, int text,
                int outlierChannels) {

            int tokens() {
                return prefix + visual + text;
            }
        }

        static final Shape DEFAULT = new Shape(2, 8, 32, 128, 41, 3328, 64, 4);
        static final float OUTLIER_GAIN = 8f;
        static final String DESCRIPTION = "2 layers, 8 KV heads, 32 query heads, head dim 128; 41 prefix + 3328 "
                + "visual + 64 text tokens; fp16 normal keys with 4 outlier channels (x8) per KV head";

        private ExampleCapture() {
        }

        static void write(Path path, long seed, Shape s) throws IOException {
            Random random = new Random(seed);
            try (Arena arena = Arena.ofConfined()) {
                SafetensorsWriter writer = new SafetensorsWriter();
                for (int l = 0; l < s.layers(); l++) {
                    MemorySegment keys = normal(arena, random, (long) s.kvHeads() * s.tokens() * s.headDim());
                    for (int h = 0; h < s.kvHeads(); h++) {
                        for (int channel : outliers(random, s)) {
                            for (int n = 0; n < s.tokens(); n++) {
                                long i = ((long) h * s.tokens() + n) * s.headDim() + channel;
                                Elements.write(keys, DType.FP16, i, OUTLIER_GAIN * Elements.read(keys, DType.FP16, i));
                            }
                        }
                    }
                    MemorySegment values = normal(arena, random, (long) s.kvHeads() * s.tokens() * s.headDim());
                    MemorySegment queries = normal(arena, random, (long) s.queryHeads() * s.headDim());
                    long[] kvShape = {s.kvHeads(), s.tokens(), s.headDim()};
                    writer.add("layers." + l + ".k", DType.FP16, kvShape, keys)
                            .add("layers." + l + ".v", DType.FP16, kvShape, values)
                            .add("layers." + l + ".q", DType.FP16, new long[] {s.queryHeads(), s.headDim()},
                                    queries);
                }
                writer.metadata("visual_spans", "[[" + s.prefix() + ", " + (s.prefix() + s.visual()) + "]]")
                        .metadata("source", "calibquant eval --make-example, seed " + seed)
                        .write(path);
            }
        }

        private static int[] outliers(Random random, Shape s) {
            return random.ints(0, s.headDim()).distinct().limit(s.outlierChannels()).toArray();
        }

        private static MemorySegment normal(Arena arena, Random random, long count) {
            MemorySegment data = arena.allocate(count * 2, 2);
            for (long i = 0; i < count; i++) {
                Elements.write(data, DType.FP16, i, (float) random.nextGaussian());
            }
            return data;
        }
    }
}
