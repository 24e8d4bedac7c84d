package dev.calibquant.quant;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * One fixture pins the quantizer of the Python kernel harness ({@code tools/harness/check_kernels.py}'s
 * {@code ref_quantize} and {@code pack_codes}) to this library's {@link ChannelQuantizer}: fp16 channels (random
 * normals with outliers, a constant channel, exact halves) and what Java makes of them at 1, 2 and 4 bits. This test
 * fails when the Java side no longer produces the committed fixture; {@code tools/tests/test_harness_quantizer.py}
 * fails when the harness drifts from it beyond what its float32 arithmetic allows (same offsets, scales within one
 * ulp, codes within one step and only where the exact quotient lies that close to a rounding boundary).
 * {@code -Dcalibquant.fixture.write=true} rewrites the fixture after a deliberate change.
 */
class HarnessQuantizerFixtureTest {
    static final Path FIXTURE = Path.of("tools/tests/fixtures/java-quantizer.json");
    static final int TOKENS = 48;
    static final int CHANNELS = 16;
    /** (bits, clip) pairs: the 1-bit key and value clips and the full range of 2 and 4 bits. */
    static final float[][] CASES = {{1, 0.5f}, {1, 0.3f}, {2, 1.0f}, {4, 1.0f}};

    @Test
    void theCommittedFixtureIsWhatTheJavaQuantizerMakes() throws IOException {
        Map<String, Object> now = fixture();
        ObjectMapper json = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);
        if (Boolean.getBoolean("calibquant.fixture.write")) {
            Files.createDirectories(FIXTURE.getParent());
            json.writeValue(FIXTURE.toFile(), now);
        }
        assertThat(Files.exists(FIXTURE)).as(FIXTURE + " (write it with -Dcalibquant.fixture.write=true)").isTrue();
        // both read from JSON text, so that numbers compare by value, not by the Java type they were written from
        JsonNode expected = json.readTree(json.writeValueAsString(now));
        JsonNode actual = json.readTree(FIXTURE.toFile());
        assertThat(actual.equals(expected)).as("Java's quantizer no longer makes " + FIXTURE).isTrue();
    }

    /** Fixed inputs (seeded: the fixture is a contract, not a random test) and Java's codes, scales and offsets. */
    static Map<String, Object> fixture() {
        Random random = new Random(20261207L);
        float[] x = TestTensors.roundTo(DType.FP16, TestTensors.normal(random, 1, TOKENS, CHANNELS, 2));
        for (int n = 0; n < TOKENS; n++) {
            x[n * CHANNELS + 3] = 0.75f; // a constant channel: degenerate, codes 0, scale 0
            x[n * CHANNELS + 5] = n % 5 - 2; // -2..2: with clip 1 and 4 levels per unit, exact ties
        }
        List<Object> cases = new ArrayList<>();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment data = TestTensors.write(arena, DType.FP16, x);
            KvSlice slice = KvSlice.dense(data, DType.FP16, 1, TOKENS, CHANNELS);
            for (float[] c : CASES) {
                int bits = (int) c[0];
                QuantConfig config = QuantConfig.defaults(bits).withKeyClip(c[1]).withValueClip(c[1]);
                QuantizedSpan q = ChannelQuantizer.quantize(config, slice, slice, arena);
                Map<String, Object> one = new LinkedHashMap<>();
                one.put("bits", bits);
                one.put("clip", c[1]);
                one.put("sigma_bits", floatBits(q.keyScale(), CHANNELS));
                one.put("alpha_bits", floatBits(q.keyOffset(), CHANNELS));
                one.put("packed", bytes(q.keyCodes()));
                cases.add(one);
            }
        }
        List<Integer> x16 = new ArrayList<>();
        for (float v : x) {
            x16.add(Float.floatToFloat16(v) & 0xffff);
        }
        Map<String, Object> root = new LinkedHashMap<>();
        root.put("what", "HarnessQuantizerFixtureTest: fp16 input [tokens][channels] (bit patterns), per case Java's "
                + "scale and offset per channel (fp32 bit patterns) and packed codes [tokens][channels*bits/8]");
        root.put("tokens", TOKENS);
        root.put("channels", CHANNELS);
        root.put("x16", x16);
        root.put("cases", cases);
        return root;
    }

    private static List<Long> floatBits(MemorySegment s, int n) {
        List<Long> out = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            out.add(Integer.toUnsignedLong(Float.floatToRawIntBits(s.getAtIndex(Elements.FLOAT_LE, i))));
        }
        return out;
    }

    private static List<Integer> bytes(MemorySegment s) {
        List<Integer> out = new ArrayList<>();
        for (long i = 0; i < s.byteSize(); i++) {
            out.add(s.get(ValueLayout.JAVA_BYTE, i) & 0xff);
        }
        return out;
    }
}
