package dev.calibquant.kernels;

import dev.calibquant.cuda.UnsupportedDeviceException;
import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.util.Map;
import org.junit.jupiter.api.Test;

/** Which shipped variant a decode launch picks for a group size: no GPU needed, the shipped manifest is enough. */
class CalibQuantKernelsTest {
    private static final KernelManifest SHIPPED = KernelManifest.loadShipped();

    private static String decode(int d, int bits, int mode, int group) {
        return CalibQuantKernels.variantFor(SHIPPED, "calibquant_decode", Map.of("D", d, "BITS", bits, "MM_MODE", mode),
                group);
    }

    @Test
    void oneBitGroupsOfUpToFourTakeTheFourSlotVariants() {
        for (int group = 1; group <= 4; group++) {
            assertThat(decode(128, 1, 1, group)).isEqualTo("calibquant_decode_b1_d128_mm1_hs4");
            assertThat(decode(64, 1, 2, group)).isEqualTo("calibquant_decode_b1_d64_mm2_hs4");
        }
        assertThat(CalibQuantKernels.variantFor(SHIPPED, "calibquant_minmax", Map.of("D", 128, "BITS", 1), 4))
                .isEqualTo("calibquant_minmax_b1_d128_hs4");
    }

    @Test
    void largerGroupsTakeTheEightSlotVariants() {
        for (int group = 5; group <= 8; group++) {
            assertThat(decode(128, 1, 0, group)).isEqualTo("calibquant_decode_b1_d128_mm0");
        }
        assertThat(CalibQuantKernels.variantFor(SHIPPED, "calibquant_minmax", Map.of("D", 64, "BITS", 1), 6))
                .isEqualTo("calibquant_minmax_b1_d64");
    }

    @Test
    void bitWidthsWithoutAFourSlotVariantFallBackToEightSlots() {
        assertThat(decode(128, 2, 1, 4)).isEqualTo("calibquant_decode_b2_d128_mm1");
        assertThat(decode(64, 4, 0, 1)).isEqualTo("calibquant_decode_b4_d64_mm0");
    }

    @Test
    void aConfigurationNothingShipsForIsATypedError() {
        assertThatThrownBy(() -> decode(96, 1, 1, 4)).isInstanceOf(UnsupportedDeviceException.class)
                .hasMessageContaining("calibquant_decode").hasMessageContaining("group of 4");
    }
}
