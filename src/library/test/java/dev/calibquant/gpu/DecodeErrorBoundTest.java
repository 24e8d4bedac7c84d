package dev.calibquant.gpu;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.attention.TestKvView;
import dev.calibquant.attention.TestKvViews;
import dev.calibquant.quant.ClipAnchor;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Dequantizer;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

/** The magnitudes the GPU error bound starts from cover every key and value a span rebuilds, whatever its format. */
class DecodeErrorBoundTest {

    @Test
    void theLargestMagnitudesCoverEveryRebuiltElement() {
        Random random = new Random(17);
        QuantConfig mid = QuantConfig.defaults(1).withKeyClip(0.7f).withValueClip(0.7f)
                .withClipAnchor(ClipAnchor.MIDPOINT);
        for (QuantConfig config : List.of(QuantConfig.defaults(2), QuantConfig.defaults(1).withValueBits(4),
                QuantConfig.defaults(1).withValueGranularity(Granularity.PER_TOKEN),
                mid.withParamType(DType.FP16).withWideKeyChannels(64))) {
            try (Arena arena = Arena.ofConfined()) {
                // a short span: per-token values have fewer (σ, α) pairs than channels
                TestKvView view = TestKvViews.random(arena, random, DType.FP16, 2, 64, 5, 8, new int[] {40, 3},
                        config);
                double[] top = DecodeErrorBound.maxAbs(view);
                for (QuantizedSpan s : view.visualSpans()) {
                    for (int h = 0; h < 2; h++) {
                        for (double k : Dequantizer.keys(s, h)) {
                            assertThat(Math.abs(k)).as("%s key", config).isLessThanOrEqualTo(top[0]);
                        }
                        for (double v : Dequantizer.values(s, h)) {
                            assertThat(Math.abs(v)).as("%s value", config).isLessThanOrEqualTo(top[1]);
                        }
                    }
                }
            }
        }
    }
}
