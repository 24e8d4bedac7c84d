package dev.calibquant.attention;

import static org.assertj.core.api.Assertions.assertThat;

import java.util.Random;
import org.junit.jupiter.api.Test;

class SoftmaxTest {
    private static final double U = 0x1p-24;

    /** The claim the error bound of the fast path relies on: relative error at most 3u on [−87, 0]. */
    @Test
    void expIsWithinThreeUnitsOfRoundoffOnItsRange() {
        double worst = 0;
        for (int bits = Float.floatToRawIntBits(-0f); ; bits++) {
            // every float in [−87, −0] would be 1.1e9 values; a stride of 97 covers every binade densely
            float x = Float.intBitsToFloat(bits);
            if (x < Softmax.MIN_ARGUMENT) {
                break;
            }
            double exact = Math.exp(x);
            worst = Math.max(worst, Math.abs(Softmax.exp(x) - exact) / exact);
            bits += 96;
        }
        long seed = System.nanoTime();
        Random random = new Random(seed);
        for (int i = 0; i < 1_000_000; i++) {
            float x = (float) (-87 * random.nextDouble());
            double exact = Math.exp(x);
            worst = Math.max(worst, Math.abs(Softmax.exp(x) - exact) / exact);
        }
        assertThat(worst).as("seed %d", seed).isLessThanOrEqualTo(3 * U);
        assertThat(Softmax.exp(0f)).isEqualTo(1f);
        assertThat(Softmax.exp(-200f)).isEqualTo(Softmax.exp(Softmax.MIN_ARGUMENT)).isPositive();
    }

    @Test
    void expInPlaceSubtractsTheMaximumAndSumsTheExponentials() {
        float[] s = {5f, 1f, 3f, 5f, -100f, 7f};
        float sum = Softmax.expInPlace(s, 1, 4);
        assertThat(s[0]).isEqualTo(5f);
        assertThat(s[5]).isEqualTo(7f);
        assertThat(s[3]).isEqualTo(1f);
        assertThat((double) s[1]).isCloseTo(Math.exp(-4), org.assertj.core.data.Offset.offset(3 * U * Math.exp(-4)));
        assertThat((double) sum).isCloseTo(1 + Math.exp(-4) + Math.exp(-2) + Math.exp(-105),
                org.assertj.core.data.Offset.offset(8 * U));
    }
}
