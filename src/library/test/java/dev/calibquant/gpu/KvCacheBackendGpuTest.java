package dev.calibquant.gpu;

import dev.calibquant.testing.Fp16Data;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.attention.ReferenceAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.ClipAnchor;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.testing.GpuTest;
import dev.calibquant.testing.Seeds;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * The backend chooser on a GPU host: the cache lives on the device, decode runs there against the CPU reference, and
 * a setting the kernels do not take (per-token values) decodes on the CPU from a downloaded layer, and a span clipped
 * about its midpoint (quantized on the CPU at prefill) decodes on the GPU.
 */
@GpuTest
class KvCacheBackendGpuTest {

    @Test
    void decodesOnTheGpuAndFallsBackToTheCpuForWhatTheKernelsDoNotTake() {
        long seed = Seeds.fresh("KvCacheBackendGpuTest");
        Random random = new Random(seed);
        ModelGeometry g = new ModelGeometry(1, 16, 4, 128);
        // the paper's 1 bit; per-token values (decoded on the CPU from a download); clipped about the midpoint
        // (quantized on the CPU at prefill, decoded on the GPU)
        for (QuantConfig config : List.of(QuantConfig.defaults(1),
                QuantConfig.defaults(1).withValueGranularity(Granularity.PER_TOKEN),
                QuantConfig.defaults(1).withKeyClip(0.7f).withValueClip(0.7f)
                        .withClipAnchor(ClipAnchor.MIDPOINT).withCalibrate(false),
                // fp16 parameters and wide key channels (quantized and decoded on the CPU, from a download)
                QuantConfig.defaults(1).withKeyClip(0.7f).withValueClip(0.7f).withClipAnchor(ClipAnchor.MIDPOINT)
                        .withCalibrate(false).withParamType(DType.FP16).withWideKeyChannels(88))) {
            try (KvCacheBackend backend = KvCacheBackend.choose(true, g, 64L << 20); Arena arena = Arena.ofConfined()) {
                assertThat(backend.onGpu()).as(backend.cpuReason()).isTrue();
                KvCacheManager cache = backend.manager();
                List<Sequence> seqs = new ArrayList<>();
                for (int b = 0; b < 3; b++) {
                    int prompt = 300 + 100 * b;
                    Sequence s = cache.createSequence(prompt, List.of(new TokenSpan(20, 20 + 200 + 50 * b)), config);
                    s.fill(0, Fp16Data.fp16(arena, Fp16Data.normal(random, 4, prompt, 128, 4)),
                            Fp16Data.fp16(arena, Fp16Data.normal(random, 4, prompt, 128, 0)), DType.FP16);
                    seqs.add(s);
                }
                List<LayerKvView> views = seqs.stream().map(s -> s.layer(0)).toList();
                List<LayerKvView> host = new ArrayList<>();
                for (Sequence s : seqs) {
                    host.add(backend.deviceCache().orElseThrow().download(s, 0, arena));
                }
                float[] qf = Fp16Data.normal(random, 3, 16, 128, 0);
                MemorySegment q = Fp16Data.fp16(arena, qf);
                MemorySegment gpu = arena.allocate(4L * qf.length);
                MemorySegment cpu = arena.allocate(4L * qf.length);
                DecodeAttention attention = backend.attention(config.calibration());
                attention.decode(views, q, DType.FP16, 16, gpu);
                new ReferenceAttention(config.calibration()).decode(host, q, DType.FP16, 16, cpu);
                for (int row = 0; row < 3 * 16; row++) {
                    // the GPU's bound; the CPU fast path's error is far below it
                    double tol = DecodeErrorBound.attentionTolerance(
                            Arrays.copyOfRange(qf, row * 128, row * 128 + 128), host.get(row / 16), 64, 64);
                    for (int j = 0; j < 128; j++) {
                        float a = gpu.getAtIndex(ValueLayout.JAVA_FLOAT, row * 128 + j);
                        float e = cpu.getAtIndex(ValueLayout.JAVA_FLOAT, row * 128 + j);
                        assertThat((double) Math.abs(a - e)).as("seed %d %s row %d channel %d", seed, config, row, j)
                                .isLessThanOrEqualTo(tol);
                    }
                }
                assertThatThrownBy(() -> attention.decode(views, q.asSlice(2), DType.FP16, 16, gpu))
                        .hasMessageContaining("queries");
                seqs.forEach(Sequence::close);
            }
        }
    }

    @Test
    void aHeadDimTheKernelsDoNotTakeStaysOnTheCpuAndSaysWhy() {
        try (KvCacheBackend backend = KvCacheBackend.choose(true, new ModelGeometry(2, 4, 2, 16), 1 << 20)) {
            assertThat(backend.onGpu()).isFalse();
            assertThat(backend.cpuReason()).contains("head dim 64 and 128, not 16");
        }
    }
}
