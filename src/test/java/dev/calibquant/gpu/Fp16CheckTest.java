package dev.calibquant.gpu;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatCode;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.quant.NonFiniteInputException;
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
}
