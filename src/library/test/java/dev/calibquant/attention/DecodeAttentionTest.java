package dev.calibquant.attention;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.NonFiniteInputException;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import dev.calibquant.quant.TestTensors;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ForkJoinPool;
import java.util.function.Consumer;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;
import org.junit.jupiter.api.Test;

class DecodeAttentionTest {
    private static final Calibration CALIBRATION = QuantConfig.defaults(1).calibration();

    static List<DecodeAttention> implementations() {
        return List.of(new CpuCalibQuantAttention(CALIBRATION), new ReferenceAttention(CALIBRATION));
    }

    static float[] decode(DecodeAttention attention, Arena arena, List<TestKvView> batch, MemorySegment queries,
            DType queryType, int queryHeads) {
        MemorySegment out = arena.allocate(4L * batch.size() * queryHeads * batch.get(0).headDim(), 4);
        attention.decode(batch, queries, queryType, queryHeads, out);
        return TestTensors.read(out, DType.FP32);
    }

    /**
     * Query head h reads KV head h / G: the output of head h over the whole cache is the output of a one-head query
     * over the cache cut down to that KV head. Same arithmetic on the same numbers, so the results are identical.
     */
    @Property(tries = 12)
    void queryHeadReadsItsGroupsKvHead(@ForAll long seed, @ForAll("groups") int groups, @ForAll("bits") int bits) {
        Random random = new Random(seed);
        int kvHeads = 3;
        int headDim = 64;
        QuantConfig config = QuantConfig.defaults(bits);
        try (Arena arena = Arena.ofConfined()) {
            TestKvView view = TestKvViews.random(arena, random, DType.FP16, kvHeads, headDim, 20, 24,
                    new int[] {90, 7}, config);
            int queryHeads = kvHeads * groups;
            MemorySegment queries = TestKvViews.queries(arena, random, DType.FP32, 1, queryHeads, headDim);
            for (DecodeAttention attention : List.of(new CpuCalibQuantAttention(config.calibration()),
                    new ReferenceAttention(config.calibration()))) {
                float[] all = decode(attention, arena, List.of(view), queries, DType.FP32, queryHeads);
                for (int h = 0; h < queryHeads; h++) {
                    MemorySegment one = queries.asSlice(4L * h * headDim, 4L * headDim);
                    float[] single = decode(attention, arena, List.of(TestKvViews.singleHead(view, h / groups)), one,
                            DType.FP32, 1);
                    float[] fromAll = java.util.Arrays.copyOfRange(all, h * headDim, (h + 1) * headDim);
                    assertThat(fromAll).as("seed %d head %d %s", seed, h, attention.getClass().getSimpleName())
                            .containsExactly(single);
                }
            }
        }
    }

    /** Each sequence's output depends on its own cache only: replacing another sequence changes nothing. */
    @Property(tries = 10)
    void sequencesAreIndependent(@ForAll long seed, @ForAll("bits") int bits) {
        Random random = new Random(seed);
        QuantConfig config = QuantConfig.defaults(bits);
        try (Arena arena = Arena.ofConfined()) {
            TestKvView a = TestKvViews.random(arena, random, DType.BF16, 2, 128, 10, 10, new int[] {100}, config);
            TestKvView b = TestKvViews.random(arena, random, DType.BF16, 2, 128, 30, 40, new int[] {5, 80}, config);
            TestKvView c = TestKvViews.random(arena, random, DType.BF16, 2, 128, 3, 3, new int[] {200}, config);
            MemorySegment queries = TestKvViews.queries(arena, random, DType.FP16, 2, 8, 128);
            for (DecodeAttention attention : implementations()) {
                float[] ab = decode(attention, arena, List.of(a, b), queries, DType.FP16, 8);
                float[] ac = decode(attention, arena, List.of(a, c), queries, DType.FP16, 8);
                assertThat(java.util.Arrays.copyOf(ab, 8 * 128)).containsExactly(java.util.Arrays.copyOf(ac, 8 * 128));
                assertThat(java.util.Arrays.copyOfRange(ab, 8 * 128, 16 * 128))
                        .isNotEqualTo(java.util.Arrays.copyOfRange(ac, 8 * 128, 16 * 128));
            }
        }
    }

    /** Without spans the fast engine is exact attention: the exact class and the CalibQuant class agree bit for bit. */
    @Property(tries = 10)
    void exactAttentionIsTheSameEngineWithoutSpans(@ForAll long seed, @ForAll("dtypes") DType dtype) {
        Random random = new Random(seed);
        try (Arena arena = Arena.ofShared()) {
            List<TestKvView> batch = List.of(
                    TestKvViews.random(arena, random, dtype, 2, 64, 300, 310, new int[0], QuantConfig.defaults(1)),
                    TestKvViews.random(arena, random, dtype, 2, 64, 1, 4, new int[0], QuantConfig.defaults(1)));
            MemorySegment queries = TestKvViews.queries(arena, random, DType.BF16, 2, 4, 64);
            ForkJoinPool pool = new ForkJoinPool(2);
            try {
                float[] exact = decode(new CpuExactAttention(pool), arena, batch, queries, DType.BF16, 4);
                float[] calib = decode(new CpuCalibQuantAttention(CALIBRATION), arena, batch, queries, DType.BF16, 4);
                assertThat(exact).containsExactly(calib);
            } finally {
                pool.shutdown();
            }
        }
    }

    /** A confined cache is processed on the calling thread alone; the result is the same, bit for bit. */
    @Property(tries = 5)
    void confinedCachesGiveTheSameResultOnTheCallingThread(@ForAll long seed, @ForAll("bits") int bits) {
        QuantConfig config = QuantConfig.defaults(bits);
        float[][] results = new float[2][];
        for (int i = 0; i < 2; i++) {
            Random random = new Random(seed);
            try (Arena arena = i == 0 ? Arena.ofShared() : Arena.ofConfined()) {
                List<TestKvView> batch = List.of(
                        TestKvViews.random(arena, random, DType.FP16, 4, 64, 12, 20, new int[] {100, 3}, config),
                        TestKvViews.random(arena, random, DType.FP16, 4, 64, 5, 5, new int[] {70}, config));
                MemorySegment queries = TestKvViews.queries(arena, random, DType.FP32, 2, 8, 64);
                results[i] = decode(new CpuCalibQuantAttention(config.calibration()), arena, batch, queries,
                        DType.FP32, 8);
            }
        }
        assertThat(results[1]).containsExactly(results[0]);
    }

    @Test
    void oneTokenGivesItsValueAndEqualKeysGiveTheMeanValue() {
        try (Arena arena = Arena.ofConfined()) {
            Random random = new Random(11);
            TestKvView one = TestKvViews.random(arena, random, DType.FP32, 1, 8, 1, 1, new int[0],
                    QuantConfig.defaults(1));
            MemorySegment queries = TestKvViews.queries(arena, random, DType.FP32, 1, 1, 8);
            float[] v = TestTensors.read(one.fullValues(), DType.FP32);
            for (DecodeAttention attention : List.of(new CpuExactAttention(), new CpuCalibQuantAttention(CALIBRATION),
                    new ReferenceAttention(CALIBRATION))) {
                assertThat(decode(attention, arena, List.of(one), queries, DType.FP32, 1)).containsExactly(v);
            }
            // two tokens with the same key: weights 1/2 each; 0.5·(a + b) is exact in fp32 up to one rounding
            float[] keys = {1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8};
            float[] values = TestTensors.normal(random, 1, 2, 8, 0);
            TestKvView two = new TestKvView(1, 8, DType.FP32, 2, 2, TestTensors.write(arena, DType.FP32, keys),
                    TestTensors.write(arena, DType.FP32, values), List.of());
            for (DecodeAttention attention : List.of(new CpuExactAttention(), new ReferenceAttention(CALIBRATION))) {
                float[] out = decode(attention, arena, List.of(two), queries, DType.FP32, 1);
                for (int d = 0; d < 8; d++) {
                    assertThat(out[d]).isEqualTo((values[d] + values[8 + d]) / 2, org.assertj.core.data.Offset
                            .offset(Math.ulp((values[d] + values[8 + d]) / 2) * 2));
                }
            }
        }
    }

    /**
     * Builds a small valid call (the exact attention gets the same caches without spans), lets {@code breakIt} spoil
     * one thing, and checks the error and that the poisoned output is untouched.
     */
    private static void assertRejected(Class<? extends RuntimeException> type, boolean alsoExact, String message,
            Consumer<Call> breakIt) {
        for (int impl = 0; impl < (alsoExact ? 3 : 2); impl++) {
            try (Arena arena = Arena.ofConfined()) {
                Random random = new Random(5);
                QuantConfig config = QuantConfig.defaults(1);
                int[] spans = impl == 2 ? new int[0] : new int[] {9};
                Call call = new Call();
                call.batch.add(TestKvViews.random(arena, random, DType.FP16, 2, 16, 4, 6, spans, config));
                call.batch.add(TestKvViews.random(arena, random, DType.FP16, 2, 16, 2, 2, spans, config));
                call.queries = TestKvViews.queries(arena, random, DType.FP32, 2, 4, 16);
                call.out = arena.allocate(4L * 2 * 4 * 16, 4);
                call.arena = arena;
                breakIt.accept(call);
                call.out.fill((byte) 0x7F);
                byte[] before = call.out.toArray(ValueLayout.JAVA_BYTE);
                DecodeAttention attention = switch (impl) {
                    case 0 -> new CpuCalibQuantAttention(CALIBRATION);
                    case 1 -> new ReferenceAttention(CALIBRATION);
                    default -> new CpuExactAttention();
                };
                assertThatThrownBy(() -> attention.decode(call.batch, call.queries, call.queryType, call.queryHeads,
                        call.out)).as(attention.getClass().getSimpleName()).isInstanceOf(type)
                        .hasMessageContaining(message);
                assertThat(call.out.toArray(ValueLayout.JAVA_BYTE)).isEqualTo(before);
            }
        }
    }

    static final class Call {
        List<TestKvView> batch = new ArrayList<>();
        MemorySegment queries;
        DType queryType = DType.FP32;
        int queryHeads = 4;
        MemorySegment out;
        Arena arena;
    }

    @Test
    void nonFiniteQueriesAreRejectedNamingTheirPosition() {
        for (float bad : new float[] {Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY}) {
            assertRejected(NonFiniteInputException.class, true, "queries of sequence 1 of the batch: non-finite value " + bad
                    + " at head 2, channel 5", c -> c.queries.setAtIndex(Elements.FLOAT_LE, (4 + 2) * 16 + 5, bad));
        }
    }

    @Test
    void nonFiniteCacheValuesAreReportedWithoutWriting() {
        // a NaN stored in sequence 0's full-precision values: every head of KV head 1 produces NaN
        Consumer<Call> poison = c -> {
            TestKvView v = c.batch.get(0);
            Elements.write(v.fullValues(), DType.FP16, (long) 1 * 6 * 16 + 2 * 16 + 3, Float.NaN);
        };
        for (int impl = 0; impl < 2; impl++) {
            try (Arena arena = Arena.ofConfined()) {
                Random random = new Random(5);
                Call call = new Call();
                call.batch.add(TestKvViews.random(arena, random, DType.FP16, 2, 16, 4, 6, new int[] {9},
                        QuantConfig.defaults(1)));
                call.queries = TestKvViews.queries(arena, random, DType.FP32, 1, 4, 16);
                call.out = arena.allocate(4L * 4 * 16, 4);
                poison.accept(call);
                call.out.fill((byte) 0x11);
                DecodeAttention attention = impl == 0 ? new CpuCalibQuantAttention(CALIBRATION)
                        : new ReferenceAttention(CALIBRATION);
                assertThatThrownBy(() -> attention.decode(call.batch, call.queries, DType.FP32, 4, call.out))
                        .isInstanceOf(NonFiniteResultException.class).hasMessageContaining("query head 2");
                assertThat(call.out.toArray(ValueLayout.JAVA_BYTE)).containsOnly((byte) 0x11);
            }
        }
    }

    @Test
    void badShapesAreRejectedWithoutWriting() {
        assertRejected(InvalidShapeException.class, true, "queries holds", c -> c.queries = c.queries.asSlice(4));
        assertRejected(InvalidShapeException.class, true, "queries holds", c -> c.queryType = DType.FP16);
        assertRejected(InvalidShapeException.class, true, "out holds",
                c -> c.out = c.arena.allocate(4L * 2 * 4 * 16 + 4));
        assertRejected(InvalidShapeException.class, true, "not a positive multiple", c -> c.queryHeads = 3);
        assertRejected(InvalidShapeException.class, true, "sequence 1 of the batch has 1 KV heads", c -> c.batch.set(1,
                TestKvViews.singleHead(c.batch.get(1), 0)));
        assertRejected(InvalidShapeException.class, true, "fullTokens 7 outside", c -> c.batch.set(1,
                withFull(c.batch.get(1), 7)));
        assertRejected(InvalidShapeException.class, true, "fullKeys holds", c -> c.batch.set(0,
                new TestKvView(2, 16, DType.FP16, 4, 6, c.batch.get(0).fullKeys().asSlice(2),
                        c.batch.get(0).fullValues(), c.batch.get(0).visualSpans())));
        assertRejected(InvalidShapeException.class, true, "the batch is empty", c -> c.batch.clear());
    }

    @Test
    void badSpansAreRejectedWithoutWriting() {
        assertRejected(InvalidShapeException.class, false, "span 0 keyCodes holds", c -> c.batch.set(1,
                withSpan(c.batch.get(1), s -> new QuantizedSpan(s.tokens(), s.kvHeads(), s.headDim(), s.bits(),
                        s.keyGranularity(), s.valueGranularity(), s.keyCodes().asSlice(1), s.valueCodes(),
                        s.keyScale(), s.keyOffset(), s.valueScale(), s.valueOffset()))));
        assertRejected(InvalidShapeException.class, false, "span 0 valueScale holds", c -> c.batch.set(0,
                withSpan(c.batch.get(0), s -> new QuantizedSpan(s.tokens(), s.kvHeads(), s.headDim(), s.bits(),
                        s.keyGranularity(), dev.calibquant.quant.Granularity.PER_TOKEN, s.keyCodes(),
                        s.valueCodes(), s.keyScale(), s.keyOffset(), s.valueScale(), s.valueOffset()))));
        assertRejected(InvalidShapeException.class, false, "bits must be", c -> c.batch.set(0,
                withSpan(c.batch.get(0), s -> new QuantizedSpan(s.tokens(), s.kvHeads(), s.headDim(), 3,
                        s.keyGranularity(), s.valueGranularity(), s.keyCodes(), s.valueCodes(), s.keyScale(),
                        s.keyOffset(), s.valueScale(), s.valueOffset()))));
        assertRejected(InvalidShapeException.class, false, "has no tokens", c -> c.batch.set(0,
                new TestKvView(2, 16, DType.FP16, 0, 6, c.batch.get(0).fullKeys(), c.batch.get(0).fullValues(),
                        List.of())));
    }

    @Test
    void exactAttentionRefusesQuantizedSpans() {
        try (Arena arena = Arena.ofConfined()) {
            Random random = new Random(3);
            TestKvView view = TestKvViews.random(arena, random, DType.FP16, 1, 16, 4, 6, new int[] {9},
                    QuantConfig.defaults(1));
            MemorySegment queries = TestKvViews.queries(arena, random, DType.FP32, 1, 1, 16);
            MemorySegment out = arena.allocate(64);
            assertThatThrownBy(() -> new CpuExactAttention().decode(List.of(view), queries, DType.FP32, 1, out))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("full-precision caches only");
        }
    }

    private static TestKvView withFull(TestKvView v, int full) {
        return new TestKvView(v.kvHeads(), v.headDim(), v.dtype(), full, v.fullCapacity(), v.fullKeys(),
                v.fullValues(), v.visualSpans());
    }

    private static TestKvView withSpan(TestKvView v, java.util.function.UnaryOperator<QuantizedSpan> change) {
        List<QuantizedSpan> spans = new ArrayList<>(v.visualSpans());
        spans.set(0, change.apply(spans.get(0)));
        return new TestKvView(v.kvHeads(), v.headDim(), v.dtype(), v.fullTokens(), v.fullCapacity(), v.fullKeys(),
                v.fullValues(), spans);
    }

    @Provide
    Arbitrary<Integer> groups() {
        return Arbitraries.of(1, 2, 4, 8);
    }

    @Provide
    Arbitrary<Integer> bits() {
        return Arbitraries.of(1, 2, 4, 8);
    }

    @Provide
    Arbitrary<DType> dtypes() {
        return Arbitraries.of(DType.class);
    }
}
