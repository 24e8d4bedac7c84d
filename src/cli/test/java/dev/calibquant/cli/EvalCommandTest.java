package dev.calibquant.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.within;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.calibquant.cache.RandomSeedExtension;
import dev.calibquant.io.SafetensorsReader;
import dev.calibquant.io.SafetensorsTensor;
import dev.calibquant.io.SafetensorsWriter;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.QuantConfig;
import java.io.IOException;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.function.Consumer;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;

class EvalCommandTest {

    @RegisterExtension
    final RandomSeedExtension seed = new RandomSeedExtension();

    @TempDir
    Path dir;

    record Result(int exitCode, String out, String err) {
    }

    static Result run(String... args) {
        StringWriter out = new StringWriter();
        StringWriter err = new StringWriter();
        int code = new CommandLine(new EvalCommand()).setOut(new PrintWriter(out)).setErr(new PrintWriter(err))
                .execute(args);
        return new Result(code, out.toString(), err.toString());
    }

    /** A capture of random normal tensors, which a test may edit before it is written. */
    final class Capture {
        int layers = 2;
        int kvHeads = 2;
        int queryHeads = 4;
        int headDim = 16;
        int tokens = 120;
        DType dtype = DType.FP16;
        String spans = "[[10, 90]]";
        final Arena arena = Arena.ofAuto();
        final Random random = seed.random();
        final List<String> names = new ArrayList<>();
        final List<long[]> shapes = new ArrayList<>();
        final List<MemorySegment> data = new ArrayList<>();

        Capture standardTensors() {
            for (int l = 0; l < layers; l++) {
                tensor("layers." + l + ".k", kvHeads, tokens, headDim);
                tensor("layers." + l + ".v", kvHeads, tokens, headDim);
                tensor("layers." + l + ".q", queryHeads, headDim);
            }
            return this;
        }

        Capture tensor(String name, long... shape) {
            long count = 1;
            for (long d : shape) {
                count *= d;
            }
            MemorySegment segment = arena.allocate(count * dtype.byteSize(), 4);
            for (long i = 0; i < count; i++) {
                Elements.write(segment, dtype, i, (float) random.nextGaussian());
            }
            names.add(name);
            shapes.add(shape);
            data.add(segment);
            return this;
        }

        MemorySegment data(String name) {
            return data.get(names.indexOf(name));
        }

        Capture remove(String name) {
            int i = names.indexOf(name);
            names.remove(i);
            shapes.remove(i);
            data.remove(i);
            return this;
        }

        Path write(String fileName) throws IOException {
            SafetensorsWriter writer = new SafetensorsWriter();
            for (int i = 0; i < names.size(); i++) {
                writer.add(names.get(i), dtype, shapes.get(i), data.get(i));
            }
            if (spans != null) {
                writer.metadata("visual_spans", spans);
            }
            Path path = dir.resolve(fileName);
            writer.write(path);
            return path;
        }
    }

    /**
     * One text token and one visual token: a one-token span has degenerate channels, rebuilt as {@code c·x}
     * (spec §2), and calibrating a single score leaves it unchanged ({@code g(γ) = γ}). So the quantized output has a
     * closed form: scores {@code q·k0/√D} and {@code q·(c_K k1)/√D}, output {@code p0 v0 + p1 c_V v1}; with 2 bits
     * {@code c = 1} and the cache is exact.
     *
     * <p>Tolerance: the command runs in fp32 (unit roundoff u = 2^-24 ≈ 6e-8); each output element passes through
     * an 8-term dot product, a 2-term softmax and a 2-term weighted sum, about 20 roundings, so it is within
     * ~1.2e-6 relative of the double-precision closed form. The 1-bit relative error is O(1) (the clip moves the
     * visual token), so it is reproduced to ~1e-6 relative; 1e-5 leaves a 10x margin. The exact 2-bit cache gives
     * an error of the same ~1e-6 size, bounded by 1e-5.
     */
    @Test
    void aOneTokenSpanMatchesTheClosedForm() throws IOException {
        Capture c = new Capture();
        c.layers = 1;
        c.kvHeads = 1;
        c.queryHeads = 2;
        c.headDim = 8;
        c.tokens = 2;
        c.dtype = DType.FP32;
        c.spans = "[[1, 2]]";
        Path file = c.standardTensors().write("tiny.safetensors");
        Result r = run(file.toString(), "--json", "--bits", "2,1");
        assertThat(r.exitCode()).as(r.err()).isZero();
        JsonNode results = new ObjectMapper().readTree(r.out()).get("results");
        // unquantized, 1 bit on/off, 2 bits on/off (sorted), then the same two widths clipped about the midpoint (0.7),
        // then 2-bit keys with 1-bit values clipped about the midpoint, then 1 bit about the midpoint with fp16
        // parameters and no or all (8) key channels at 2 bits
        assertThat(results).hasSize(15);
        assertThat(results.get(11).get("cache").asText()).isEqualTo("1-bit mid 0.7 f16");
        assertThat(results.get(13).get("cache").asText()).isEqualTo("1-bit mid 0.7 f16 w8");
        assertThat(results.get(13).get("paramType").asText()).isEqualTo("FP16");
        assertThat(results.get(13).get("wideKeyChannels").asInt()).isEqualTo(8);
        assertThat(results.get(5).get("cache").asText()).isEqualTo("1-bit mid 0.7");
        assertThat(results.get(5).get("clipAnchor").asText()).isEqualTo("MIDPOINT");
        assertThat(results.get(9).get("cache").asText()).isEqualTo("k2 v1 mid 0.7");
        assertThat(results.get(9).get("bits").asInt()).isEqualTo(2);
        assertThat(results.get(9).get("valueBits").asInt()).isEqualTo(1);
        assertThat(results.get(9).get("keyClip").asDouble()).isEqualTo(1.0);

        MemorySegment k = c.data("layers.0.k");
        MemorySegment v = c.data("layers.0.v");
        MemorySegment q = c.data("layers.0.q");
        double[] exact = closedForm(k, v, q, 1, 1);
        double[] oneBit = closedForm(k, v, q, QuantConfig.defaults(1).keyClip(), QuantConfig.defaults(1).valueClip());
        double diff = 0;
        double norm = 0;
        double maxAbs = 0;
        for (int i = 0; i < exact.length; i++) {
            diff += (oneBit[i] - exact[i]) * (oneBit[i] - exact[i]);
            norm += exact[i] * exact[i];
            maxAbs = Math.max(maxAbs, Math.abs(oneBit[i] - exact[i]));
        }
        double relative = Math.sqrt(diff / norm);
        assertThat(relative).isGreaterThan(1e-3); // the clip must show, or the comparison below proves nothing

        JsonNode unquantized = results.get(0);
        assertThat(unquantized.get("cache").asText()).isEqualTo("unquantized");
        assertThat(unquantized.get("relativeError").asDouble()).isLessThan(1e-5);
        assertThat(unquantized.get("storedBytes").asLong()).isEqualTo(2L * 2 * 8 * 4);
        for (int i = 1; i <= 2; i++) {
            JsonNode row = results.get(i);
            assertThat(row.get("bits").asInt()).isEqualTo(1);
            assertThat(row.get("calibration").asBoolean()).isEqualTo(i == 1);
            assertThat(row.get("relativeError").asDouble()).isCloseTo(relative, within(1e-5 * relative));
            assertThat(row.get("maxAbsError").asDouble()).isCloseTo(maxAbs, within(1e-5 * maxAbs));
            // 1 text token in fp32 (2·8·4 bytes), 1 visual token at 1 bit (2 bytes), 4 params × 8 channels × 4 bytes
            assertThat(row.get("storedBytes").asLong()).isEqualTo(64 + 2 + 128);
            assertThat(row.get("fp16Bytes").asLong()).isEqualTo(2L * 2 * 8 * 2);
        }
        for (int i = 3; i <= 4; i++) {
            assertThat(results.get(i).get("bits").asInt()).isEqualTo(2);
            assertThat(results.get(i).get("relativeError").asDouble()).isLessThan(1e-5);
        }
    }

    /**
     * A layer whose values are all zero has an exact output of zero, and so has every cache (the quantized zeros are
     * rebuilt as α = 0, σ = 0): no error at all. The relative error 0/0 must read 0, not NaN, which is not even JSON.
     */
    @Test
    void zeroValuesGiveZeroErrorAndValidJson() throws IOException {
        Capture c = new Capture();
        c.standardTensors();
        c.data("layers.1.v").fill((byte) 0);
        Path file = c.write("zero-values.safetensors");
        Result r = run(file.toString(), "--json");
        assertThat(r.exitCode()).as(r.err()).isZero();
        JsonNode results = new ObjectMapper().readTree(r.out()).get("results");
        // the widths also about the midpoint; k2 v1; 1 bit with fp16 parameters and 0, 8 or 16 wide key channels
        assertThat(results).hasSize(2 * (1 + 3 * 2 + 3 * 2 + 2 + 3 * 2));
        for (JsonNode row : results) {
            if (row.get("layer").asInt() == 1) {
                assertThat(row.get("relativeError").isNumber()).as("%s", row).isTrue();
                assertThat(row.get("relativeError").asDouble()).as("%s", row).isZero();
                assertThat(row.get("maxAbsError").asDouble()).isZero();
            } else {
                assertThat(row.get("relativeError").asDouble()).isFinite();
            }
        }
    }

    /** Attention of each query head over token 0 (text) and token 1 (visual, rebuilt as clip × x), in double. */
    private static double[] closedForm(MemorySegment k, MemorySegment v, MemorySegment q, double keyClip,
            double valueClip) {
        int d = 8;
        double[] out = new double[2 * d];
        for (int h = 0; h < 2; h++) {
            double s0 = 0;
            double s1 = 0;
            for (int i = 0; i < d; i++) {
                double qi = Elements.read(q, DType.FP32, h * d + i);
                s0 += qi * Elements.read(k, DType.FP32, i);
                s1 += qi * keyClip * Elements.read(k, DType.FP32, d + i);
            }
            s0 /= Math.sqrt(d);
            s1 /= Math.sqrt(d);
            double m = Math.max(s0, s1);
            double p0 = Math.exp(s0 - m);
            double p1 = Math.exp(s1 - m);
            for (int i = 0; i < d; i++) {
                out[h * d + i] = (p0 * Elements.read(v, DType.FP32, i)
                        + p1 * valueClip * Elements.read(v, DType.FP32, d + i)) / (p0 + p1);
            }
        }
        return out;
    }

    @Test
    void theTableHasARowPerLayerCacheAndCalibration() throws IOException {
        Capture c = new Capture();
        c.spans = "[[100, 118], [5, 60]]"; // two spans, out of order
        Path file = c.standardTensors().write("two-spans.safetensors");
        Result r = run(file.toString());
        assertThat(r.exitCode()).as(r.err()).isZero();
        assertThat(r.out()).contains("2 layers, 4 query heads, 2 KV heads, head dim 16; 120 tokens of FP16")
                .contains("visual spans [5, 60), [100, 118) (73 tokens)").contains("rel. error");
        List<String> rows = r.out().lines().filter(line -> line.matches("\\s+\\d+\\s+\\S+.*x$")).toList();
        // the defaults, then every width clipped about the midpoint, then 2-bit keys with 1-bit values
        assertThat(rows).hasSize(2 * (1 + 3 * 2 + 3 * 2 + 2 + 3 * 2));
        assertThat(rows.get(1)).containsPattern("^\\s+0\\s+1-bit\\s+on\\s");
        assertThat(rows.get(6)).containsPattern("^\\s+0\\s+4-bit\\s+off\\s");
        assertThat(rows.get(7)).containsPattern("^\\s+0\\s+1-bit mid 0.7\\s+on\\s");
    }

    @Test
    void storedBytesFollowTheLayoutForEveryWidth() throws IOException {
        Capture c = new Capture();
        Path file = c.standardTensors().write("bytes.safetensors");
        Result r = run(file.toString(), "--json", "--bits", "1,2,4,8");
        assertThat(r.exitCode()).as(r.err()).isZero();
        JsonNode root = new ObjectMapper().readTree(r.out());
        assertThat(root.get("visualSpans").toString()).isEqualTo("[[10,90]]");
        long text = 2L * 2 * 40 * 16 * 2; // 40 fp16 tokens outside the span, keys and values, 2 KV heads
        for (JsonNode row : root.get("results")) {
            int bits = row.get("bits").isNull() ? 16 : row.get("bits").asInt();
            int valueBits = row.get("bits").isNull() ? 16 : row.get("valueBits").asInt();
            int paramBytes = row.path("paramType").asText("FP32").equals("FP16") ? 2 : 4;
            int wide = row.path("wideKeyChannels").asInt(0);
            long expected = bits == 16 ? 2L * 2 * 120 * 16 * 2
                    : text + 2L * 80 * 16 * (bits + valueBits) / 8 + 4L * 2 * 16 * paramBytes
                            + (wide > 0 ? 2L * 16 / 8 + 2L * 80 * wide / 8 : 0); // the mask and the low bits
            assertThat(row.get("storedBytes").asLong()).as("bits %d", bits).isEqualTo(expected);
            assertThat(row.get("fp16Bytes").asLong()).isEqualTo(2L * 2 * 120 * 16 * 2);
            assertThat(row.get("relativeError").asDouble()).isFinite();
        }
    }

    @Test
    void makeExampleWritesTheDocumentedCapture() throws IOException {
        Path file = dir.resolve("example.safetensors");
        Result r = run("--make-example", file.toString(), "--seed", Long.toString(seed.seed()));
        assertThat(r.exitCode()).as(r.err()).isZero();
        try (SafetensorsReader reader = SafetensorsReader.open(file)) {
            assertThat(reader.names()).containsExactly("layers.0.k", "layers.0.v", "layers.0.q", "layers.1.k",
                    "layers.1.v", "layers.1.q");
            assertThat(reader.metadata()).containsEntry("visual_spans", "[[41, 3369]]");
            SafetensorsTensor k = reader.tensor("layers.1.k");
            assertThat(k.dtype()).isEqualTo(DType.FP16);
            assertThat(k.shape()).containsExactly(8, 41 + 3328 + 64, 128);
            assertThat(reader.tensor("layers.0.q").shape()).containsExactly(32, 128);
            // Per KV head, exactly 4 channels have standard deviation ~8; the rest ~1. Over 3433 samples the
            // estimate is within a few percent, so a threshold at 3 separates them with no overlap.
            for (int h = 0; h < 8; h++) {
                int outliers = 0;
                for (int d = 0; d < 128; d++) {
                    double sum = 0;
                    for (int n = 0; n < 3433; n++) {
                        double x = Elements.read(k.data(), DType.FP16, ((long) h * 3433 + n) * 128 + d);
                        sum += x * x;
                    }
                    if (Math.sqrt(sum / 3433) > 3) {
                        outliers++;
                    }
                }
                assertThat(outliers).as("head %d", h).isEqualTo(4);
            }
        }
    }

    private void assertBadCapture(Consumer<Capture> edit, String... fragments) throws IOException {
        Capture c = new Capture();
        c.standardTensors();
        edit.accept(c);
        Path file = c.write("bad.safetensors");
        Result r = run(file.toString());
        assertThat(r.exitCode()).as(r.out()).isEqualTo(1);
        assertThat(r.err()).startsWith("calibquant eval: ").contains(fragments);
        assertThat(r.out()).isEmpty();
    }

    @Test
    void badCapturesExitWithOneAndSayWhy() throws IOException {
        assertBadCapture(c -> c.remove("layers.1.v"), "has no tensor 'layers.1.v'");
        assertBadCapture(c -> c.tensor("layers.3.q", 4, 16), "has layers.3.q but no layers.2.k");
        assertBadCapture(c -> c.remove("layers.0.k").remove("layers.1.k"), "no tensor layers.0.k");
        assertBadCapture(c -> c.remove("layers.0.k").tensor("layers.0.k", 2, 120 * 16),
                "is not [kv_heads, tokens, head_dim]");
        assertBadCapture(c -> c.remove("layers.1.v").tensor("layers.1.v", 2, 119, 16),
                "layers.1.v F16[2, 119, 16] differs from layers.0.k F16[2, 120, 16]");
        assertBadCapture(c -> c.remove("layers.0.q").tensor("layers.0.q", 4, 8).remove("layers.1.q")
                .tensor("layers.1.q", 4, 8), "head dim 8 but the keys have 16");
        assertBadCapture(c -> c.remove("layers.0.q").tensor("layers.0.q", 3, 16).remove("layers.1.q")
                .tensor("layers.1.q", 3, 16), "3 query heads are not a multiple of 2 KV heads");
        assertBadCapture(c -> c.spans = null, "no metadata visual_spans");
        assertBadCapture(c -> c.spans = "[[1, 2]", "visual_spans is not one JSON value");
        assertBadCapture(c -> c.spans = "[[11, 67]] junk", "visual_spans is not one JSON value");
        assertBadCapture(c -> c.spans = "[[10, 99999999999999999999]]", "token positions must be from 0 to 2147483647");
        assertBadCapture(c -> c.spans = "[]", "non-empty JSON list");
        assertBadCapture(c -> c.spans = "[[5]]", "holds [5], not a [start, end] pair");
        assertBadCapture(c -> c.spans = "[[5, 2.5]]", "not a [start, end] pair");
        assertBadCapture(c -> c.spans = "[[7, 7]]", "[7, 7) is empty");
        assertBadCapture(c -> c.spans = "[[100, 121]]", "[100, 121) runs past the prompt's 120 tokens");
        assertBadCapture(c -> c.spans = "[[10, 50], [40, 60]]", "[10, 50) and [40, 60) overlap");
        assertBadCapture(c -> Elements.write(c.data("layers.1.k"), DType.FP16, 1000, Float.NaN),
                "layer 1 of sequence", "keys: non-finite value NaN at head 0, token 62, channel 8");
    }

    @Test
    void unreadableFilesExitWithOne() throws Exception {
        Result missing = run(dir.resolve("nope.safetensors").toString());
        assertThat(missing.exitCode()).isEqualTo(1);
        assertThat(missing.err()).contains("no such file").contains("nope.safetensors");
        Result directory = run(dir.toString());
        assertThat(directory.exitCode()).isEqualTo(1);
        assertThat(directory.err()).isEqualTo("calibquant eval: " + dir + " is a directory, not a safetensors capture\n");
        Path fifo = dir.resolve("fifo");
        if (new ProcessBuilder("mkfifo", fifo.toString()).start().waitFor(10, java.util.concurrent.TimeUnit.SECONDS)
                && Files.exists(fifo)) {
            Result r = run(fifo.toString()); // refused at once: reading a FIFO would wait for a writer forever
            assertThat(r.exitCode()).isEqualTo(1);
            assertThat(r.err()).contains(fifo + " is not a regular file");
        }
        Path garbage = dir.resolve("garbage.safetensors");
        Files.write(garbage, new byte[] {1, 2, 3});
        Result r = run(garbage.toString());
        assertThat(r.exitCode()).isEqualTo(1);
        assertThat(r.err()).contains("is 3 bytes, shorter than the 8-byte header length field");
    }

    @Test
    void badUsageExitsWithTwo() throws IOException {
        Path file = new Capture().standardTensors().write("ok.safetensors");
        Result bits = run(file.toString(), "--bits", "1,3");
        assertThat(bits.exitCode()).isEqualTo(2);
        assertThat(bits.err()).contains("--bits takes 1, 2, 4 or 8, got 3");
        Result both = run(file.toString(), "--make-example", dir.resolve("x").toString());
        assertThat(both.exitCode()).isEqualTo(2);
        assertThat(both.err()).contains("not both");
        assertThat(Files.exists(dir.resolve("x"))).isFalse();
        Result none = run();
        assertThat(none.exitCode()).isEqualTo(2);
        assertThat(none.err()).contains("missing FILE");
        Result unknown = run(file.toString(), "--frobnicate");
        assertThat(unknown.exitCode()).isEqualTo(2);
        String[][] bad = {{"--error-budget", "0"}, {"--error-budget", "1.5"}, {"--error-budget", "NaN"},
            {"--midpoint-clips", "0"}, {"--midpoint-clips", "0.7,1.5"}, {"--midpoint-clips", "abc"}};
        String[] said = {"--error-budget takes a relative error in (0, 1], got 0.0", "got 1.5", "got NaN",
            "--midpoint-clips takes factors in (0, 1], got 0", "got 1.5", "in (0, 1] or 'none', got abc"};
        for (int i = 0; i < bad.length; i++) {
            Result r = run(file.toString(), bad[i][0], bad[i][1]);
            assertThat(r.exitCode()).as(String.join(" ", bad[i])).isEqualTo(2);
            assertThat(r.err()).as(String.join(" ", bad[i])).contains(said[i]).doesNotContain("\tat ");
            assertThat(r.out()).isEmpty();
        }
    }

    /**
     * The advisor picks, per layer, the row with the fewest stored bytes among those within the budget, the one a
     * reader would pick from the JSON results; a budget nothing meets keeps fp16 and says what came closest.
     */
    @Test
    void theAdvisorRecommendsTheSmallestSettingWithinTheBudget() throws IOException {
        Path file = new Capture().standardTensors().write("advice.safetensors");
        for (double budget : new double[] {1.0, 0.3, 0.1}) {
            Result r = run(file.toString(), "--json", "--error-budget", Double.toString(budget));
            assertThat(r.exitCode()).as(r.err()).isZero();
            JsonNode root = new ObjectMapper().readTree(r.out());
            JsonNode rec = root.get("recommendation");
            assertThat(rec).hasSize(2);
            for (JsonNode advice : rec) {
                int layer = advice.get("layer").asInt();
                JsonNode best = null;
                for (JsonNode row : root.get("results")) {
                    if (row.get("layer").asInt() != layer || row.get("bits").isNull()
                            || row.get("relativeError").asDouble() > budget) {
                        continue;
                    }
                    if (best == null || row.get("storedBytes").asLong() < best.get("storedBytes").asLong()
                            || (row.get("storedBytes").asLong() == best.get("storedBytes").asLong()
                                    && row.get("relativeError").asDouble() < best.get("relativeError").asDouble())) {
                        best = row;
                    }
                }
                if (best == null) {
                    assertThat(advice.get("cache").asText()).isEqualTo("unquantized");
                } else {
                    assertThat(advice.get("cache").asText()).as("budget %s layer %d", budget, layer)
                            .isEqualTo(best.get("cache").asText());
                    assertThat(advice.get("storedBytes").asLong()).isEqualTo(best.get("storedBytes").asLong());
                    assertThat(advice.get("relativeError").asDouble()).isLessThanOrEqualTo(budget);
                }
            }
        }
        Result loose = run(file.toString(), "--error-budget", "1");
        assertThat(loose.out()).contains("Recommendation for a relative error of at most 1").contains("  layer 0: 1-bit");
        Result tight = run(file.toString(), "--error-budget", "1e-9");
        assertThat(tight.exitCode()).isZero();
        assertThat(tight.out()).contains("layer 0: keep fp16: no setting is within 1.00e-09").contains("the closest");
    }
}
