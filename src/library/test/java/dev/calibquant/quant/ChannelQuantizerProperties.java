package dev.calibquant.quant;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;
import java.util.Random;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;
import net.jqwik.api.constraints.IntRange;
import org.junit.jupiter.api.Test;

class ChannelQuantizerProperties {

    /** A quantized span plus the float inputs it came from, for one test case. */
    record Case(QuantConfig config, int kvHeads, int tokens, int headDim, float[] keys, float[] values,
            QuantizedSpan span) {
    }

    static Case quantizeRandom(Arena arena, long seed, QuantConfig config, DType dtype, int kvHeads, int tokens,
            int headDim) {
        Random random = new Random(seed);
        float[] keys = TestTensors.roundTo(dtype, TestTensors.normal(random, kvHeads, tokens, headDim, 2));
        float[] values = TestTensors.roundTo(dtype, TestTensors.normal(random, kvHeads, tokens, headDim, 0));
        KvSlice k = KvSlice.dense(TestTensors.write(arena, dtype, keys), dtype, kvHeads, tokens, headDim);
        KvSlice v = KvSlice.dense(TestTensors.write(arena, dtype, values), dtype, kvHeads, tokens, headDim);
        return new Case(config, kvHeads, tokens, headDim, keys, values, ChannelQuantizer.quantize(config, k, v, arena));
    }

    /** Exact {@code round_half_even(clamp((x − α)·L/(β − α), 0, L))} in decimal arithmetic. */
    static int exactCode(float x, float alpha, float beta, int levels) {
        if (alpha == beta) {
            return 0;
        }
        BigDecimal u = new BigDecimal(x).subtract(new BigDecimal(alpha)).multiply(BigDecimal.valueOf(levels))
                .divide(new BigDecimal(beta).subtract(new BigDecimal(alpha)), new MathContext(80));
        u = u.max(BigDecimal.ZERO).min(BigDecimal.valueOf(levels));
        return u.setScale(0, RoundingMode.HALF_EVEN).intValueExact();
    }

    static float param(MemorySegment s, long i) {
        return s.getAtIndex(Elements.FLOAT_LE, i);
    }

    @Property(tries = 60)
    void codesAreTheExactRoundedQuotientForEveryGranularity(@ForAll long seed, @ForAll("bits") int bits,
            @ForAll("bits") int valueBits, @ForAll("granularities") Granularity keyGranularity,
            @ForAll("granularities") Granularity valueGranularity,
            @ForAll @IntRange(min = 1, max = 3) int kvHeads, @ForAll @IntRange(min = 2, max = 40) int tokens) {
        int headDim = 16;
        QuantConfig config = QuantConfig.defaults(bits).withKeyGranularity(keyGranularity)
                .withValueGranularity(valueGranularity).withValueBits(valueBits);
        try (Arena arena = Arena.ofConfined()) {
            Case c = quantizeRandom(arena, seed, config, DType.FP32, kvHeads, tokens, headDim);
            checkAgainstExact(c, true);
            checkAgainstExact(c, false);
        }
    }

    /** Recomputes every group's α, β, σ from the inputs and every code in exact arithmetic. */
    static void checkAgainstExact(Case c, boolean keys) {
        Granularity granularity = keys ? c.config.keyGranularity() : c.config.valueGranularity();
        float clip = keys ? c.config.keyClip() : c.config.valueClip();
        float[] x = keys ? c.keys : c.values;
        MemorySegment scale = keys ? c.span.keyScale() : c.span.valueScale();
        MemorySegment offset = keys ? c.span.keyOffset() : c.span.valueOffset();
        int perHead = granularity == Granularity.PER_TOKEN ? c.tokens : c.headDim;
        assertThat(scale.byteSize()).isEqualTo(4L * c.kvHeads * perHead);
        int levels = keys ? c.config.levels() : c.config.valueLevels();
        int bits = keys ? c.config.bits() : c.config.valueBits();
        assertThat(keys ? c.span.bits() : c.span.valueBits()).isEqualTo(bits);
        assertThat((keys ? c.span.keyCodes() : c.span.valueCodes()).byteSize())
                .isEqualTo((long) c.kvHeads * c.tokens * c.headDim * bits / 8);
        for (int h = 0; h < c.kvHeads; h++) {
            int[] codes = Dequantizer.codes(c.span, h, keys);
            for (int n = 0; n < c.tokens; n++) {
                for (int d = 0; d < c.headDim; d++) {
                    float min = Float.POSITIVE_INFINITY;
                    float max = Float.NEGATIVE_INFINITY;
                    for (int m = 0; m < c.tokens; m++) {
                        for (int e = 0; e < c.headDim; e++) {
                            boolean same = switch (granularity) {
                                case PER_CHANNEL -> e == d;
                                case GLOBAL -> true;
                                case PER_TOKEN -> m == n;
                            };
                            if (same) {
                                float v = x[(h * c.tokens + m) * c.headDim + e];
                                min = Math.min(min, v);
                                max = Math.max(max, v);
                            }
                        }
                    }
                    float alpha = clip * min;
                    float beta = clip * max;
                    long p = (long) h * perHead + (granularity == Granularity.PER_TOKEN ? n : d);
                    assertThat(param(offset, p)).isEqualTo(alpha);
                    assertThat(param(scale, p)).isEqualTo((float) (((double) beta - alpha) / levels));
                    float xv = x[(h * c.tokens + n) * c.headDim + d];
                    assertThat(codes[n * c.headDim + d])
                            .as("%s head %d token %d channel %d x=%s alpha=%s beta=%s", keys ? "keys" : "values",
                                    h, n, d, xv, alpha, beta)
                            .isEqualTo(exactCode(xv, alpha, beta, levels));
                }
            }
        }
    }

    @Property(tries = 40)
    void oneBitCodeIsOneExactlyAboveTheMidpoint(@ForAll long seed, @ForAll @IntRange(min = 2, max = 64) int tokens) {
        int headDim = 32;
        try (Arena arena = Arena.ofConfined()) {
            Case c = quantizeRandom(arena, seed, QuantConfig.defaults(1), DType.FP16, 2, tokens, headDim);
            for (int h = 0; h < 2; h++) {
                int[] codes = Dequantizer.codes(c.span, h, true);
                for (int d = 0; d < headDim; d++) {
                    float max = Float.NEGATIVE_INFINITY;
                    float min = Float.POSITIVE_INFINITY;
                    for (int n = 0; n < tokens; n++) {
                        max = Math.max(max, c.keys[(h * tokens + n) * headDim + d]);
                        min = Math.min(min, c.keys[(h * tokens + n) * headDim + d]);
                    }
                    boolean degenerate = min == max; // equal fp16 values happen with few tokens: code 0
                    BigDecimal alpha = new BigDecimal(param(c.span.keyOffset(), h * headDim + d));
                    BigDecimal beta = new BigDecimal(0.5f * max);
                    for (int n = 0; n < tokens; n++) {
                        float x = c.keys[(h * tokens + n) * headDim + d];
                        boolean above = new BigDecimal(x).multiply(BigDecimal.TWO).compareTo(alpha.add(beta)) > 0;
                        assertThat(codes[n * headDim + d]).as("seed %d head %d token %d channel %d", seed, h, n, d)
                                .isEqualTo(above && !degenerate ? 1 : 0);
                    }
                }
            }
        }
    }

    @Test
    void tiesRoundHalfToEven() {
        try (Arena arena = Arena.ofConfined()) {
            // 1 bit, clip 0.5: channel range [-2, 2] -> [α, β] = [-1, 1], midpoint 0 -> code 0; just above -> 1.
            float[] oneBit = {-2f, 2f, 0f, Math.nextUp(0f)};
            int[] codes = quantizeChannel(arena, QuantConfig.defaults(1), oneBit);
            assertThat(codes).containsExactly(0, 1, 0, 1);
            // 2 bits, clip 1: range [0, 3], σ = 1: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 1.25 -> 1, 2.75 -> 3.
            float[] twoBit = {0f, 3f, 0.5f, 1.5f, 2.5f, 1.25f, 2.75f};
            assertThat(quantizeChannel(arena, QuantConfig.defaults(2), twoBit)).containsExactly(0, 3, 0, 2, 2, 1, 3);
        }
    }

    /** Quantizes one channel (headDim 8, all channels equal) and returns channel 0's codes. */
    private static int[] quantizeChannel(Arena arena, QuantConfig config, float[] channel) {
        int tokens = channel.length;
        int headDim = 8;
        float[] x = new float[tokens * headDim];
        for (int n = 0; n < tokens; n++) {
            java.util.Arrays.fill(x, n * headDim, (n + 1) * headDim, channel[n]);
        }
        KvSlice slice = KvSlice.dense(TestTensors.write(arena, DType.FP32, x), DType.FP32, 1, tokens, headDim);
        QuantizedSpan span = ChannelQuantizer.quantize(config, slice, slice, arena);
        int[] all = Dequantizer.codes(span, 0, true);
        int[] codes = new int[tokens];
        for (int n = 0; n < tokens; n++) {
            codes[n] = all[n * headDim];
        }
        return codes;
    }

    @Property(tries = 30)
    void degenerateChannelsStoreCodeZeroScaleZeroAndRebuildTheClippedValue(@ForAll long seed,
            @ForAll("bits") int bits) {
        try (Arena arena = Arena.ofConfined()) {
            QuantConfig config = QuantConfig.defaults(bits);
            // a one-token span: every channel is degenerate
            Case single = quantizeRandom(arena, seed, config, DType.BF16, 2, 1, 16);
            for (int h = 0; h < 2; h++) {
                double[] rebuilt = Dequantizer.keys(single.span, h);
                for (int d = 0; d < 16; d++) {
                    assertThat(param(single.span.keyScale(), h * 16 + d)).isZero();
                    assertThat(rebuilt[d]).isEqualTo((double) (config.keyClip() * single.keys[h * 16 + d]));
                }
                assertThat(Dequantizer.codes(single.span, h, false)).containsOnly(0);
            }
            // a constant channel among ordinary ones
            Random random = new Random(seed);
            int tokens = 20;
            float[] x = TestTensors.normal(random, 1, tokens, 16, 0);
            float constant = (float) random.nextGaussian();
            for (int n = 0; n < tokens; n++) {
                x[n * 16 + 5] = constant;
            }
            KvSlice slice = KvSlice.dense(TestTensors.write(arena, DType.FP32, x), DType.FP32, 1, tokens, 16);
            QuantizedSpan span = ChannelQuantizer.quantize(config, slice, slice, arena);
            int[] codes = Dequantizer.codes(span, 0, true);
            for (int n = 0; n < tokens; n++) {
                assertThat(codes[n * 16 + 5]).isZero();
                assertThat(Dequantizer.keys(span, 0)[n * 16 + 5]).isEqualTo((double) (config.keyClip() * constant));
            }
            assertThat(param(span.keyScale(), 5)).isZero();
            assertThat(param(span.keyScale(), 4)).isPositive();
        }
    }

    @Property(tries = 30)
    void everyRebuiltElementIsWithinHalfAStepOfItsClampedInput(@ForAll long seed, @ForAll("bits") int bits) {
        // |α + σ·code − clamp(x, α, β)| ≤ σ_real/2 in exact arithmetic; the stored σ is σ_real rounded to fp32, so
        // code·|σ − σ_real| ≤ L·u·σ (u = 2^−24) is added, plus 2^−52 relative for forming the value in double.
        try (Arena arena = Arena.ofConfined()) {
            QuantConfig config = QuantConfig.defaults(bits);
            int tokens = 30;
            int headDim = 16;
            Case c = quantizeRandom(arena, seed, config, DType.FP16, 2, tokens, headDim);
            for (int h = 0; h < 2; h++) {
                double[] rebuilt = Dequantizer.values(c.span, h);
                for (int d = 0; d < headDim; d++) {
                    double sigma = param(c.span.valueScale(), h * headDim + d);
                    double alpha = param(c.span.valueOffset(), h * headDim + d);
                    double beta = alpha + sigma * config.levels();
                    double bound = sigma / 2 * (1 + 1e-6) + config.levels() * sigma * 0x1p-24
                            + 0x1p-50 * (Math.abs(alpha) + Math.abs(beta));
                    for (int n = 0; n < tokens; n++) {
                        double x = c.values[(h * tokens + n) * headDim + d];
                        double clamped = Math.min(Math.max(x, alpha), beta);
                        assertThat(Math.abs(rebuilt[n * headDim + d] - clamped)).as("seed %d", seed)
                                .isLessThanOrEqualTo(bound);
                    }
                }
            }
        }
    }

    @Property(tries = 20)
    void aStridedSliceOfABlockQuantizesLikeADenseCopyAndIgnoresEverythingOutsideIt(@ForAll long seed,
            @ForAll("bits") int bits, @ForAll("dtypes") DType dtype) {
        int kvHeads = 3;
        int capacity = 50;
        int headDim = 16;
        Random random = new Random(seed);
        int start = random.nextInt(20);
        int end = start + 1 + random.nextInt(capacity - start - 1);
        QuantConfig config = QuantConfig.defaults(bits);
        try (Arena arena = Arena.ofConfined()) {
            float[] block = TestTensors.roundTo(dtype, TestTensors.normal(random, kvHeads, capacity, headDim, 1));
            float[] dense = new float[kvHeads * (end - start) * headDim];
            for (int h = 0; h < kvHeads; h++) {
                System.arraycopy(block, (h * capacity + start) * headDim, dense, h * (end - start) * headDim,
                        (end - start) * headDim);
            }
            MemorySegment blockSeg = TestTensors.write(arena, dtype, block);
            KvSlice strided = KvSlice.ofTokens(blockSeg, dtype, kvHeads, capacity, headDim, start, end);
            QuantizedSpan a = ChannelQuantizer.quantize(config, strided, strided, arena);
            KvSlice denseSlice = KvSlice.dense(TestTensors.write(arena, DType.FP32, dense), DType.FP32, kvHeads,
                    end - start, headDim);
            QuantizedSpan b = ChannelQuantizer.quantize(config, denseSlice, denseSlice, arena);
            assertSameSpan(a, b);
            // poison everything outside [start, end): the result must not change
            for (int h = 0; h < kvHeads; h++) {
                for (int n = 0; n < capacity; n++) {
                    if (n < start || n >= end) {
                        for (int d = 0; d < headDim; d++) {
                            Elements.write(blockSeg, dtype, ((long) h * capacity + n) * headDim + d, Float.NaN);
                        }
                    }
                }
            }
            assertSameSpan(ChannelQuantizer.quantize(config, strided, strided, arena), b);
        }
    }

    @Property(tries = 20)
    void statisticsAreIndependentPerHead(@ForAll long seed, @ForAll("bits") int bits,
            @ForAll("granularities") Granularity granularity) {
        int kvHeads = 3;
        int tokens = 12;
        int headDim = 16;
        QuantConfig config = QuantConfig.defaults(bits).withKeyGranularity(granularity)
                .withValueGranularity(granularity);
        Random random = new Random(seed);
        try (Arena arena = Arena.ofConfined()) {
            float[] x = TestTensors.normal(random, kvHeads, tokens, headDim, 1);
            QuantizedSpan before = quantizeBoth(arena, config, x, kvHeads, tokens, headDim);
            int changed = random.nextInt(kvHeads);
            for (int i = changed * tokens * headDim; i < (changed + 1) * tokens * headDim; i++) {
                x[i] = 3 * x[i] + 1;
            }
            QuantizedSpan after = quantizeBoth(arena, config, x, kvHeads, tokens, headDim);
            long perHead = before.keyScale().byteSize() / kvHeads;
            long codesPerHead = before.keyCodes().byteSize() / kvHeads;
            for (int h = 0; h < kvHeads; h++) {
                boolean same = h != changed;
                assertThat(bytes(before.keyOffset(), h * perHead, perHead)
                        .equals(bytes(after.keyOffset(), h * perHead, perHead))).as("head %d", h).isEqualTo(same);
                if (same) {
                    assertThat(bytes(after.keyScale(), h * perHead, perHead))
                            .isEqualTo(bytes(before.keyScale(), h * perHead, perHead));
                    assertThat(bytes(after.keyCodes(), h * codesPerHead, codesPerHead))
                            .isEqualTo(bytes(before.keyCodes(), h * codesPerHead, codesPerHead));
                }
            }
        }
    }

    private static QuantizedSpan quantizeBoth(Arena arena, QuantConfig config, float[] x, int kvHeads, int tokens,
            int headDim) {
        KvSlice s = KvSlice.dense(TestTensors.write(arena, DType.FP32, x), DType.FP32, kvHeads, tokens, headDim);
        return ChannelQuantizer.quantize(config, s, s, arena);
    }

    @Test
    void globalStatisticsAreBroadcastToEveryChannel() {
        try (Arena arena = Arena.ofConfined()) {
            QuantConfig config = QuantConfig.defaults(2).withKeyGranularity(Granularity.GLOBAL);
            Case c = quantizeRandom(arena, 7, config, DType.FP32, 2, 10, 16);
            for (int h = 0; h < 2; h++) {
                float min = Float.POSITIVE_INFINITY;
                for (int i = h * 160; i < (h + 1) * 160; i++) {
                    min = Math.min(min, c.keys[i]);
                }
                for (int d = 0; d < 16; d++) {
                    assertThat(param(c.span.keyOffset(), h * 16 + d)).isEqualTo(min);
                    assertThat(param(c.span.keyScale(), h * 16 + d)).isEqualTo(param(c.span.keyScale(), h * 16));
                }
            }
        }
    }

    @Property(tries = 30)
    void bytesForIsExactlyWhatQuantizeAllocates(@ForAll("bits") int bits,
            @ForAll("granularities") Granularity kg, @ForAll("granularities") Granularity vg,
            @ForAll @IntRange(min = 1, max = 4) int kvHeads, @ForAll @IntRange(min = 1, max = 30) int tokens) {
        QuantConfig config = QuantConfig.defaults(bits).withKeyGranularity(kg).withValueGranularity(vg);
        try (Arena arena = Arena.ofConfined()) {
            CountingAllocator alloc = new CountingAllocator(arena);
            float[] x = TestTensors.normal(new Random(tokens), kvHeads, tokens, 32, 0);
            KvSlice s = KvSlice.dense(TestTensors.write(arena, DType.FP16, x), DType.FP16, kvHeads, tokens, 32);
            QuantizedSpan span = ChannelQuantizer.quantize(config, s, s, alloc);
            long expected = 2L * kvHeads * tokens * 32 * bits / 8 + 8 * (ChannelQuantizer.paramCount(kg, kvHeads,
                    tokens, 32) + ChannelQuantizer.paramCount(vg, kvHeads, tokens, 32));
            assertThat(ChannelQuantizer.bytesFor(config, kvHeads, tokens, 32)).isEqualTo(expected);
            assertThat(alloc.calls).isEqualTo(1);
            assertThat(alloc.bytes).isEqualTo(expected);
            assertThat(span.keyCodes().byteSize() + span.valueCodes().byteSize() + span.keyScale().byteSize()
                    + span.keyOffset().byteSize() + span.valueScale().byteSize() + span.valueOffset().byteSize())
                    .isEqualTo(expected);
        }
    }

    @Property(tries = 40)
    void nonFiniteInputIsRejectedNamingItsPositionBeforeAnythingIsAllocated(@ForAll long seed,
            @ForAll("dtypes") DType dtype, @ForAll boolean inKeys) {
        Random random = new Random(seed);
        int kvHeads = 2;
        int tokens = 9;
        int headDim = 16;
        float[] keys = TestTensors.normal(random, kvHeads, tokens, headDim, 0);
        float[] values = TestTensors.normal(random, kvHeads, tokens, headDim, 0);
        int h = random.nextInt(kvHeads);
        int n = random.nextInt(tokens);
        int d = random.nextInt(headDim);
        float bad = new float[] {Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY}[random.nextInt(3)];
        (inKeys ? keys : values)[(h * tokens + n) * headDim + d] = bad;
        try (Arena arena = Arena.ofConfined()) {
            CountingAllocator alloc = new CountingAllocator(arena);
            KvSlice k = KvSlice.dense(TestTensors.write(arena, dtype, keys), dtype, kvHeads, tokens, headDim);
            KvSlice v = KvSlice.dense(TestTensors.write(arena, dtype, values), dtype, kvHeads, tokens, headDim);
            assertThatThrownBy(() -> ChannelQuantizer.quantize(QuantConfig.defaults(1), k, v, alloc))
                    .isInstanceOfSatisfying(NonFiniteInputException.class, e -> {
                        assertThat(e.tensor()).isEqualTo(inKeys ? "keys" : "values");
                        assertThat(e.head()).isEqualTo(h);
                        assertThat(e.token()).isEqualTo(n);
                        assertThat(e.channel()).isEqualTo(d);
                    });
            assertThat(alloc.calls).isZero();
        }
    }

    @Test
    void badShapesAreRejectedBeforeAnythingIsAllocated() {
        try (Arena arena = Arena.ofConfined()) {
            CountingAllocator alloc = new CountingAllocator(arena);
            MemorySegment data = arena.allocate(4L * 2 * 10 * 16);
            data.fill((byte) 1);
            KvSlice a = KvSlice.dense(data, DType.FP32, 2, 10, 16);
            KvSlice b = KvSlice.dense(data, DType.FP32, 2, 9, 16);
            assertThatThrownBy(() -> ChannelQuantizer.quantize(QuantConfig.defaults(1), a, b, alloc))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("values");
            KvSlice odd = KvSlice.dense(data, DType.FP32, 2, 10, 12);
            assertThatThrownBy(() -> ChannelQuantizer.quantize(QuantConfig.defaults(1), odd, odd, alloc))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("multiple of 8");
            assertThat(alloc.calls).isZero();
            assertThatThrownBy(() -> KvSlice.dense(data, DType.FP32, 2, 11, 16))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("segment holds");
            assertThatThrownBy(() -> new KvSlice(data, DType.FP32, 2, 10, 16, 100, 16, 0))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("overlaps");
            assertThatThrownBy(() -> KvSlice.ofTokens(data, DType.FP32, 2, 10, 16, 4, 4))
                    .isInstanceOf(InvalidShapeException.class);
        }
    }

    static void assertSameSpan(QuantizedSpan a, QuantizedSpan b) {
        assertThat(bytes(a.keyCodes())).isEqualTo(bytes(b.keyCodes()));
        assertThat(bytes(a.valueCodes())).isEqualTo(bytes(b.valueCodes()));
        assertThat(bytes(a.keyScale())).isEqualTo(bytes(b.keyScale()));
        assertThat(bytes(a.keyOffset())).isEqualTo(bytes(b.keyOffset()));
        assertThat(bytes(a.valueScale())).isEqualTo(bytes(b.valueScale()));
        assertThat(bytes(a.valueOffset())).isEqualTo(bytes(b.valueOffset()));
    }

    static byte[] bytes(MemorySegment s) {
        return s.toArray(ValueLayout.JAVA_BYTE);
    }

    static java.util.List<Byte> bytes(MemorySegment s, long offset, long length) {
        byte[] b = s.asSlice(offset, length).toArray(ValueLayout.JAVA_BYTE);
        java.util.List<Byte> list = new java.util.ArrayList<>();
        for (byte x : b) {
            list.add(x);
        }
        return list;
    }

    @Provide
    Arbitrary<Integer> bits() {
        return Arbitraries.of(1, 2, 4, 8);
    }

    @Provide
    Arbitrary<Granularity> granularities() {
        return Arbitraries.of(Granularity.class);
    }

    @Provide
    Arbitrary<DType> dtypes() {
        return Arbitraries.of(DType.class);
    }
}
