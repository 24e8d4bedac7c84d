package dev.calibquant.quant;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * fp16 offsets and scales, and wide key channels (2 bits inside 1-bit keys), against the rules of spec §2–§3:
 * what is stored, what it rebuilds, how much it takes, and what is refused.
 */
class WideKeysAndHalfParamsTest {
    private static final int HEADS = 2;
    private static final int DIM = 64;
    private static final int TOKENS = 37;

    private static QuantizedSpan quantize(Arena arena, QuantConfig config, float[] keys, float[] values,
            DType dtype) {
        KvSlice k = KvSlice.dense(TestTensors.write(arena, dtype, keys), dtype, HEADS, TOKENS, DIM);
        KvSlice v = KvSlice.dense(TestTensors.write(arena, dtype, values), dtype, HEADS, TOKENS, DIM);
        return ChannelQuantizer.quantize(config, k, v, arena);
    }

    private static float[] keys(Random random) {
        return TestTensors.roundTo(DType.FP16, TestTensors.normal(random, HEADS, TOKENS, DIM, 4));
    }

    @Test
    void fp16ParametersTakeHalfTheBytesAndEveryCodeIsTheNearestStoredLevel() {
        Random random = new Random(11);
        float[] k = keys(random);
        float[] v = keys(random);
        for (QuantConfig base : new QuantConfig[] {QuantConfig.defaults(1), QuantConfig.defaults(2),
                QuantConfig.defaults(4), QuantConfig.defaults(1).withClipAnchor(ClipAnchor.MIDPOINT).withKeyClip(0.7f)}) {
            QuantConfig half = base.withParamType(DType.FP16);
            try (Arena arena = Arena.ofConfined()) {
                QuantizedSpan s = quantize(arena, half, k, v, DType.FP16);
                assertThat(s.paramType()).isEqualTo(DType.FP16);
                assertThat(s.keyScale().byteSize()).isEqualTo(2L * HEADS * DIM);
                assertThat(ChannelQuantizer.bytesFor(base, HEADS, TOKENS, DIM)
                        - ChannelQuantizer.bytesFor(half, HEADS, TOKENS, DIM)).isEqualTo(2L * 2 * 2 * HEADS * DIM);
                int levels = base.levels();
                for (int h = 0; h < HEADS; h++) {
                    int[] codes = Dequantizer.codes(s, h, true);
                    for (int t = 0; t < TOKENS; t++) {
                        for (int d = 0; d < DIM; d++) {
                            double alpha = s.param(s.keyOffset(), (long) h * DIM + d);
                            double step = s.param(s.keyScale(), (long) h * DIM + d);
                            double x = k[(h * TOKENS + t) * DIM + d];
                            int c = codes[t * DIM + d];
                            double err = Math.abs(x - (alpha + step * c));
                            for (int other = 0; other <= levels; other++) { // no stored level is strictly nearer
                                assertThat(err).as("head %d token %d channel %d code %d vs %d", h, t, d, c, other)
                                        .isLessThanOrEqualTo(Math.abs(x - (alpha + step * other)));
                            }
                        }
                    }
                }
            }
        }
    }

    @Test
    void parametersBeyondFp16AreRefusedBeforeAnythingIsAllocated() {
        float[] k = new float[HEADS * TOKENS * DIM];
        java.util.Arrays.fill(k, 1f);
        k[5] = 1e6f; // channel 5 of head 0 ranges to 1e6: its offset or scale cannot be an fp16
        try (Arena arena = Arena.ofConfined()) {
            CountingAllocator counting = new CountingAllocator(arena);
            KvSlice slice = KvSlice.dense(TestTensors.write(arena, DType.FP32, k), DType.FP32, HEADS, TOKENS, DIM);
            assertThatThrownBy(() -> ChannelQuantizer.quantize(QuantConfig.defaults(1).withParamType(DType.FP16),
                    slice, slice, counting)).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("keys").hasMessageContaining("does not fit fp16 parameters");
            assertThat(counting.calls).isZero();
        }
    }

    @Test
    void wideChannelsAreTheWidestOfEachHeadTiesToTheLowerChannel() {
        float[] k = new float[HEADS * TOKENS * DIM];
        Random random = new Random(3);
        for (int h = 0; h < HEADS; h++) {
            for (int t = 0; t < TOKENS; t++) {
                for (int d = 0; d < DIM; d++) {
                    // channel d spans [-(d % 16), d % 16] (ties between d and d + 16, d + 32 ...), head 1 reversed
                    int w = h == 0 ? d % 16 : 15 - d % 16;
                    k[(h * TOKENS + t) * DIM + d] = t == 0 ? -w : t == 1 ? w : (float) (w * (2 * random.nextDouble() - 1));
                }
            }
        }
        try (Arena arena = Arena.ofConfined()) {
            QuantizedSpan s = quantize(arena, QuantConfig.defaults(1).withWideKeyChannels(8), k, k, DType.FP32);
            // head 0: widest range 15 in channels 15, 31, 47, 63; then 14 in 14, 30, 46, 62
            assertThat(s.wideKeys().channelsOf(0, DIM)).containsExactly(14, 15, 30, 31, 46, 47, 62, 63);
            // head 1: widest range 15 in channels 0, 16, 32, 48; then 14 in 1, 17, 33, 49
            assertThat(s.wideKeys().channelsOf(1, DIM)).containsExactly(0, 1, 16, 17, 32, 33, 48, 49);
        }
    }

    @Test
    void everyChannelWideIsExactlyTheTwoBitFullRangeQuantizer() {
        Random random = new Random(5);
        float[] k = keys(random);
        float[] v = keys(random);
        QuantConfig two = QuantConfig.defaults(2).withKeyClip(1f);
        QuantConfig allWide = QuantConfig.defaults(1).withWideKeyChannels(DIM);
        try (Arena arena = Arena.ofConfined()) {
            QuantizedSpan a = quantize(arena, allWide, k, v, DType.FP16);
            QuantizedSpan b = quantize(arena, two, k, v, DType.FP16);
            for (int h = 0; h < HEADS; h++) {
                assertThat(Dequantizer.fullCodes(a, h, true)).containsExactly(Dequantizer.codes(b, h, true));
                assertThat(Dequantizer.keys(a, h)).containsExactly(Dequantizer.keys(b, h));
            }
        }
    }

    @Test
    void narrowChannelsAreUntouchedAndWideOnesErrAtMostHalfAStep() {
        Random random = new Random(7);
        float[] k = keys(random);
        float[] v = keys(random);
        QuantConfig plain = QuantConfig.defaults(1).withClipAnchor(ClipAnchor.MIDPOINT).withKeyClip(0.7f);
        for (DType params : new DType[] {DType.FP32, DType.FP16}) {
            QuantConfig wide = plain.withParamType(params).withWideKeyChannels(24);
            try (Arena arena = Arena.ofConfined()) {
                QuantizedSpan a = quantize(arena, wide, k, v, DType.FP16);
                QuantizedSpan b = quantize(arena, plain.withParamType(params), k, v, DType.FP16);
                assertThat(a.valueCodes().mismatch(b.valueCodes())).isEqualTo(-1);
                assertThat(ChannelQuantizer.bytesFor(wide, HEADS, TOKENS, DIM)
                        - ChannelQuantizer.bytesFor(plain.withParamType(params), HEADS, TOKENS, DIM))
                        .as("mask and low bits").isEqualTo((long) HEADS * DIM / 8 + (long) HEADS * TOKENS * 24 / 8);
                for (int h = 0; h < HEADS; h++) {
                    java.util.Set<Integer> set = new java.util.HashSet<>();
                    for (int c : a.wideKeys().channelsOf(h, DIM)) {
                        set.add(c);
                    }
                    assertThat(set).hasSize(24);
                    double[] ra = Dequantizer.keys(a, h);
                    double[] rb = Dequantizer.keys(b, h);
                    for (int d = 0; d < DIM; d++) {
                        float lo = Float.POSITIVE_INFINITY;
                        float hi = Float.NEGATIVE_INFINITY;
                        for (int t = 0; t < TOKENS; t++) {
                            lo = Math.min(lo, k[(h * TOKENS + t) * DIM + d]);
                            hi = Math.max(hi, k[(h * TOKENS + t) * DIM + d]);
                        }
                        double step = ((double) hi - lo) / 3;
                        for (int t = 0; t < TOKENS; t++) {
                            int i = t * DIM + d;
                            if (set.contains(d)) { // half a step, plus what fp16 parameters move the grid by
                                double slack = params == DType.FP16 ? 3 * 0x1p-11 * (Math.abs(lo) + Math.abs(hi)) : 1e-6;
                                assertThat(Math.abs(ra[i] - k[(h * TOKENS + t) * DIM + d]))
                                        .as("%s head %d channel %d token %d", params, h, d, t)
                                        .isLessThanOrEqualTo(step / 2 + slack);
                            } else {
                                assertThat(ra[i]).as("%s head %d channel %d token %d", params, h, d, t)
                                        .isEqualTo(rb[i]);
                            }
                        }
                    }
                }
            }
        }
    }

    @Test
    void nonsenseIsRefusedWithItsName() {
        QuantConfig one = QuantConfig.defaults(1);
        assertThatThrownBy(() -> one.withWideKeyChannels(12)).isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("wideKeyChannels must be a multiple of 8");
        assertThatThrownBy(() -> one.withWideKeyChannels(-8)).hasMessageContaining("wideKeyChannels");
        assertThatThrownBy(() -> QuantConfig.defaults(2).withWideKeyChannels(8))
                .hasMessageContaining("needs 1-bit per-channel keys, got 2-bit");
        assertThatThrownBy(() -> one.withKeyGranularity(Granularity.PER_TOKEN).withWideKeyChannels(8))
                .hasMessageContaining("needs 1-bit per-channel keys");
        assertThatThrownBy(() -> one.withParamType(DType.BF16)).hasMessageContaining("FP32 or FP16, got BF16");
        assertThatThrownBy(() -> ChannelQuantizer.bytesFor(one.withWideKeyChannels(72), 1, 4, 64))
                .hasMessageContaining("wideKeyChannels 72 exceeds the head dimension 64");
    }

    @Test
    void aMaskThatMarksAnotherCountIsCaught() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment mask = arena.allocate(DIM / 8);
            mask.set(java.lang.foreign.ValueLayout.JAVA_BYTE, 0, (byte) 0xFF);
            mask.set(java.lang.foreign.ValueLayout.JAVA_BYTE, 1, (byte) 0x01);
            QuantizedSpan.WideKeys wide = new QuantizedSpan.WideKeys(8, mask, arena.allocate(1));
            assertThatThrownBy(() -> wide.channelsOf(0, DIM)).isInstanceOf(InvalidShapeException.class)
                    .hasMessageContaining("marks 9 channels, not 8");
        }
    }
}
