package dev.calibquant.gpu;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.quant.DType;
import dev.calibquant.quant.Granularity;
import org.junit.jupiter.api.Test;

/** What the GPU kernels take, decided without a GPU: the rest is quantized and decoded on the CPU. */
class UnsupportedSpansTest {
    private static final Granularity CHANNEL = Granularity.PER_CHANNEL;
    private static final DType FP32 = DType.FP32;

    @Test
    void oneWidthOf1To4BitsPerChannelIsTheKernelsShare() {
        for (int bits : new int[] {1, 2, 4}) {
            assertThat(DeviceKvCache.unsupportedSpans(bits, bits, CHANNEL, CHANNEL, FP32, 0)).isEmpty();
        }
        assertThat(DeviceKvCache.unsupportedSpans(8, 8, CHANNEL, CHANNEL, FP32, 0)).get().asString()
                .contains("1, 2 and 4 bits, not 8");
        assertThat(DeviceKvCache.unsupportedSpans(1, 1, CHANNEL, Granularity.PER_TOKEN, FP32, 0)).get().asString()
                .contains("per-channel");
        assertThat(DeviceKvCache.unsupportedSpans(2, 1, CHANNEL, CHANNEL, FP32, 0)).get().asString()
                .contains("one code width, not 2-bit keys and 1-bit values");
        assertThat(DeviceKvCache.unsupportedSpans(1, 1, CHANNEL, CHANNEL, DType.FP16, 0)).get().asString()
                .contains("fp32 offsets and scales, not FP16");
        assertThat(DeviceKvCache.unsupportedSpans(1, 1, CHANNEL, CHANNEL, FP32, 96)).get().asString()
                .contains("wide key channels (96 per head)");
    }
}
