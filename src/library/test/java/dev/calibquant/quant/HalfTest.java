package dev.calibquant.quant;

import static org.assertj.core.api.Assertions.assertThat;

import org.junit.jupiter.api.Test;

class HalfTest {
    @Test
    void bf16RoundsToNearestEvenAndKeepsNaN() {
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1)
        assertThat(Half.bf16ToFloat(Half.floatToBf16(1f + 0x1p-8f))).isEqualTo(1f);
        assertThat(Half.bf16ToFloat(Half.floatToBf16(1f + 0x1p-8f + 0x1p-20f))).isEqualTo(1f + 0x1p-7f);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even)
        assertThat(Half.bf16ToFloat(Half.floatToBf16(1f + 3 * 0x1p-8f))).isEqualTo(1f + 0x1p-6f);
        assertThat(Half.bf16ToFloat(Half.floatToBf16(Float.NaN))).isNaN();
        assertThat(Half.bf16ToFloat(Half.floatToBf16(-2.5f))).isEqualTo(-2.5f);
        assertThat(Half.bf16ToFloat(Half.floatToBf16(Float.MAX_VALUE))).isInfinite();
    }

    @Test
    void fp16RoundTripsRepresentableValues() {
        for (float v : new float[] {0f, -0f, 1f, -65504f, 0x1p-24f, 0.333251953125f}) {
            assertThat(Half.fp16ToFloat(Half.floatToFp16(v))).isEqualTo(v);
        }
        assertThat(Half.fp16ToFloat(Half.floatToFp16(1e6f))).isInfinite();
    }
}
