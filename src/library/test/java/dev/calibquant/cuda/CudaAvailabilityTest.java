package dev.calibquant.cuda;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import org.junit.jupiter.api.Test;

/** Runs everywhere: the probe never throws, and without a GPU it says why in words. */
class CudaAvailabilityTest {

    @Test
    void probeNeverThrowsAndGivesAReason() {
        CudaAvailability a = Cuda.availability();
        assertThat(a.reason()).isNotBlank();
        if (!a.available()) {
            assertThat(a.deviceCount()).isZero();
            assertThatThrownBy(() -> Cuda.device(0)).isInstanceOf(CudaUnavailableException.class)
                    .hasMessage(a.reason());
        } else {
            assertThat(a.deviceCount()).isPositive();
            assertThat(a.driverVersion()).isGreaterThanOrEqualTo(Cuda.MIN_DRIVER_VERSION);
        }
    }

    @Test
    void probeIsStable() {
        assertThat(Cuda.availability()).isSameAs(Cuda.availability());
    }

    @Test
    void rangeChecksRejectEveryOutOfBoundsShape() {
        DeviceBuffer.checkRange("x", 100, 0, 100);
        DeviceBuffer.checkRange("x", 100, 100, 0);
        for (long[] bad : new long[][] {{-1, 1}, {0, 101}, {1, 100}, {101, 0}, {0, -1}, {50, Long.MAX_VALUE}}) {
            assertThatThrownBy(() -> DeviceBuffer.checkRange("x", 100, bad[0], bad[1]))
                    .isInstanceOf(IndexOutOfBoundsException.class).hasMessageContaining("outside x of 100 bytes");
        }
    }

    @Test
    void ptxIsaVersionMapsToTheDriverThatIntroducedIt() {
        assertThat(CudaModule.ptxIsaVersion(".version 8.7\n.target sm_90a")).isEqualTo(87);
        assertThat(Driver.versionText(Driver.cudaVersionForPtx(87))).isEqualTo("12.8");
        assertThat(Driver.versionText(Driver.cudaVersionForPtx(90))).isEqualTo("13.0");
        assertThat(CudaModule.ptxIsaVersion("no header")).isZero();
    }
}
