package dev.calibquant.gpu;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatCode;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.NonFiniteInputException;
import dev.calibquant.testing.Seeds;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.Random;
import org.junit.jupiter.api.Test;

class Fp16CheckTest {
    private static final ValueLayout.OfShort LE = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final int B = 3;
    private static final int HQ = 4;
    private static final int D = 8;

    private static MemorySegment randomQueries(Arena arena, long seed) {
        Random r = new Random(seed);
        MemorySegment q = arena.allocate(2L * B * HQ * D);
        for (long i = 0; i < B * HQ * D; i++) {
            q.set(LE, 2 * i, Float.floatToFloat16((float) r.nextGaussian()));
        }
        return q;
    }

    @Test
    void finiteQueriesPassIncludingSubnormalsAndTheLargestHalf() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment q = randomQueries(arena, 1);
            q.set(LE, 0, (short) 0x0001); // smallest subnormal
            q.set(LE, 2, (short) 0x7bff); // 65504
            q.set(LE, 4, (short) 0xfbff); // -65504
            assertThatCode(() -> Fp16Check.requireFiniteQueries(q, B, HQ, D)).doesNotThrowAnyException();
        }
    }

    @Test
    void aNonFiniteValueIsNamedBySequenceHeadAndChannel() {
        short[] bad = {(short) 0x7e00, (short) 0x7c00, (short) 0xfc00}; // NaN, +inf, -inf
        for (short bits : bad) {
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment q = randomQueries(arena, bits);
                long index = ((2L * HQ) + 3) * D + 5; // sequence 2, head 3, channel 5
                q.set(LE, 2 * index, bits);
                assertThatThrownBy(() -> Fp16Check.requireFiniteQueries(q, B, HQ, D))
                        .isInstanceOfSatisfying(NonFiniteInputException.class, e -> {
                            assertThat(e.head()).isEqualTo(3);
                            assertThat(e.channel()).isEqualTo(5);
                            assertThat(e.token()).isEqualTo(-1);
                        })
                        .hasMessageContaining("queries of sequence 2 of the batch")
                        .hasMessageContaining("head 3")
                        .hasMessageContaining("channel 5")
                        .hasMessageNotContaining("token");
            }
        }
    }

    @Test
    void theCheckReadsLittleEndianWhateverTheHostOrder() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment q = randomQueries(arena, 7);
            // 0x007c little-endian is a tiny subnormal; read big-endian it would be +inf
            q.set(LE, 2L * 10, (short) 0x7c00);
            q.set(LE, 2L * 10, (short) 0x007c);
            assertThatCode(() -> Fp16Check.requireFiniteQueries(q, B, HQ, D)).doesNotThrowAnyException();
        }
    }

    @Test
    void firstNonFiniteFindsTheEarliestOrNone() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment q = randomQueries(arena, 11);
            assertThat(Fp16Check.firstNonFinite(q, B * HQ * D)).isEqualTo(-1);
            q.set(LE, 2L * 40, (short) 0xfc00);
            q.set(LE, 2L * 17, (short) 0x7e00);
            assertThat(Fp16Check.firstNonFinite(q, B * HQ * D)).isEqualTo(17);
            assertThat(Fp16Check.firstNonFinite(q, 17)).isEqualTo(-1); // only the first count values are read
            assertThat(Fp16Check.valueAt(q, 40)).isEqualTo(Float.NEGATIVE_INFINITY);
        }
    }

    @Test
    void aSegmentShorterThanTheShapeIsRejected() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment q = arena.allocate(2L * B * HQ * D - 2);
            assertThatThrownBy(() -> Fp16Check.requireFiniteQueries(q, B, HQ, D))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("fewer than");
        }
    }

    /** Queries of every dtype become the fp16 the kernels read: each element rounded once, little-endian. */
    @Test
    void queriesOfEveryTypeAreRoundedToFp16() {
        long seed = Seeds.fresh("Fp16CheckTest");
        Random random = new Random(seed);
        for (DType type : DType.values()) {
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment q = arena.allocate(type.byteSize() * B * HQ * D);
                for (long i = 0; i < B * HQ * D; i++) {
                    Elements.write(q, type, i, (float) (100 * random.nextGaussian()));
                }
                // the largest half (bf16 holds no 65504: it rounds to 65536; its nearest below is 65280)
                Elements.write(q, type, 1, type == DType.BF16 ? 65280f : 65504f);
                MemorySegment fp16 = Fp16Check.toFiniteFp16Queries(arena, q, type, HQ, D);
                assertThat(fp16.byteSize()).isEqualTo(2L * B * HQ * D);
                for (long i = 0; i < B * HQ * D; i++) {
                    assertThat(fp16.get(LE, 2 * i)).as("seed %d %s element %d", seed, type, i)
                            .isEqualTo(Float.floatToFloat16(Elements.read(q, type, i)));
                }
            }
        }
    }

    @Test
    void aQueryThatIsNotFiniteInFp16IsNamedBeforeAnythingIsConverted() {
        long seed = Seeds.fresh("Fp16CheckTest");
        Random random = new Random(seed);
        long index = ((2L * HQ) + 3) * D + 5; // sequence 2, head 3, channel 5
        // NaN and infinity in each type, and finite fp32/bf16 values beyond fp16's range (65520 rounds up to infinity)
        Object[][] bad = {{DType.FP16, Float.NaN}, {DType.BF16, Float.NEGATIVE_INFINITY}, {DType.FP32, Float.NaN},
            {DType.FP32, 65520f}, {DType.FP32, -1e6f}, {DType.BF16, 70144f}};
        for (Object[] b : bad) {
            DType type = (DType) b[0];
            float value = (float) b[1];
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment q = arena.allocate(type.byteSize() * B * HQ * D);
                for (long i = 0; i < B * HQ * D; i++) {
                    Elements.write(q, type, i, (float) random.nextGaussian());
                }
                Elements.write(q, type, index, value);
                String as = "seed " + seed + " " + type + " " + value;
                assertThatThrownBy(() -> Fp16Check.toFiniteFp16Queries(arena, q, type, HQ, D)).as(as)
                        .isInstanceOfSatisfying(NonFiniteInputException.class, e -> {
                            assertThat(e.head()).as(as).isEqualTo(3);
                            assertThat(e.channel()).as(as).isEqualTo(5);
                            assertThat(e.token()).as(as).isEqualTo(-1);
                            assertThat(Float.isFinite(e.value())).as(as).isFalse();
                        })
                        .hasMessageContaining("queries of sequence 2 of the batch")
                        .hasMessageContaining(Float.isFinite(value) ? "rounds to infinity in fp16" : "non-finite");
            }
        }
    }

    @Test
    void queriesOfTheWrongSizeAreRejected() {
        try (Arena arena = Arena.ofConfined()) {
            assertThatThrownBy(() -> Fp16Check.toFiniteFp16Queries(arena, arena.allocate(4L * HQ * D + 2), DType.FP32,
                    HQ, D)).isInstanceOf(IllegalArgumentException.class).hasMessageContaining("FP32 [sequences][4][8]");
            assertThatThrownBy(() -> Fp16Check.toFiniteFp16Queries(arena, arena.allocate(2L * HQ * (D + 1)), DType.FP16,
                    HQ, D)).isInstanceOf(IllegalArgumentException.class);
            assertThatThrownBy(() -> Fp16Check.toFiniteFp16Queries(arena, arena.allocate(2L * HQ * D), DType.FP16,
                    0, D)).isInstanceOf(IllegalArgumentException.class);
        }
    }

    /** The word-at-a-time scans find the first NaN or infinity in every lane and tail position, and no false one. */
    @Test
    void theWordScansFindEveryPositionAndNothingElse() {
        java.util.Random random = new java.util.Random(Seeds.fresh("Fp16CheckTest"));
        try (Arena arena = Arena.ofConfined()) {
            for (int n = 1; n <= 11; n++) {
                MemorySegment h = arena.allocate(2L * n);
                MemorySegment f = arena.allocate(4L * n);
                for (int i = 0; i < n; i++) { // finite values, the largest magnitudes included
                    h.setAtIndex(java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED, i,
                            (short) (random.nextBoolean() ? 0x7bff : 0xfbff));
                    f.setAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT_UNALIGNED, i,
                            random.nextBoolean() ? Float.MAX_VALUE : -Float.MAX_VALUE);
                }
                assertThat(Fp16Check.firstNonFinite(h, n)).isEqualTo(-1);
                assertThat(Fp16Check.firstNonFiniteFp32(f, n)).isEqualTo(-1);
                for (int at = 0; at < n; at++) {
                    MemorySegment hb = arena.allocate(2L * n).copyFrom(h);
                    MemorySegment fb = arena.allocate(4L * n).copyFrom(f);
                    hb.setAtIndex(java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED, at,
                            new short[] {(short) 0x7e00, (short) 0x7c00, (short) 0xfc00}[at % 3]);
                    fb.setAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT_UNALIGNED, at,
                            new float[] {Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY}[at % 3]);
                    assertThat(Fp16Check.firstNonFinite(hb, n)).as("fp16 n %d at %d", n, at).isEqualTo(at);
                    assertThat(Fp16Check.firstNonFiniteFp32(fb, n)).as("fp32 n %d at %d", n, at).isEqualTo(at);
                    assertThat(Fp16Check.firstNonFinite(hb, at)).as("fp16 before %d", at).isEqualTo(-1);
                    assertThat(Fp16Check.firstNonFiniteFp32(fb, at)).as("fp32 before %d", at).isEqualTo(-1);
                }
            }
        }
    }
}
