package dev.calibquant.gpu;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.attention.ReferenceAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.DType;
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

/** The GPU behind the {@link DecodeAttention} interface, over host caches, against the CPU reference. */
@GpuTest
class GpuViewAttentionGpuTest {

    @Test
    void matchesTheReferenceOverHostCaches() {
        long seed = Seeds.fresh("GpuViewAttentionGpuTest");
        Random random = new Random(seed);
        ModelGeometry g = new ModelGeometry(1, 16, 4, 128);
        QuantConfig config = QuantConfig.defaults(1);
        try (DecodeAttentions chooser = DecodeAttentions.choose(true); Arena arena = Arena.ofConfined();
                KvCacheManager cache = KvCacheManager.onHost(g, DType.FP16)) {
            assertThat(chooser.onGpu()).as(chooser.cpuReason()).isTrue();
            List<Sequence> seqs = new ArrayList<>();
            for (int b = 0; b < 3; b++) {
                int prompt = 300 + 100 * b;
                Sequence s = cache.createSequence(prompt, List.of(new TokenSpan(20, 20 + 200 + 50 * b)), config);
                s.fill(0, GpuScenario.fp16(arena, GpuScenario.normal(random, 4, prompt, 128, 4)),
                        GpuScenario.fp16(arena, GpuScenario.normal(random, 4, prompt, 128, 0)), DType.FP16);
                seqs.add(s);
            }
            List<LayerKvView> views = seqs.stream().map(s -> s.layer(0)).toList();
            float[] qf = GpuScenario.normal(random, 3, 16, 128, 0);
            MemorySegment q = GpuScenario.fp16(arena, qf);
            MemorySegment gpu = arena.allocate(4L * qf.length);
            MemorySegment cpu = arena.allocate(4L * qf.length);
            DecodeAttention attention = chooser.create(config.calibration());
            attention.decode(views, q, DType.FP16, 16, gpu);
            new ReferenceAttention(config.calibration()).decode(views, q, DType.FP16, 16, cpu);
            for (int row = 0; row < 3 * 16; row++) {
                double tol = GpuVerification.attentionTolerance(Arrays.copyOfRange(qf, row * 128, row * 128 + 128),
                        views.get(row / 16), 64, 64);
                for (int j = 0; j < 128; j++) {
                    float a = gpu.getAtIndex(ValueLayout.JAVA_FLOAT, row * 128 + j);
                    float e = cpu.getAtIndex(ValueLayout.JAVA_FLOAT, row * 128 + j);
                    assertThat((double) Math.abs(a - e)).as("seed %d row %d channel %d", seed, row, j).isLessThanOrEqualTo(tol);
                }
            }
            assertThatThrownBy(() -> attention.decode(views, q.asSlice(2), DType.FP16, 16, gpu))
                    .hasMessageContaining("queries");
            seqs.forEach(Sequence::close);
        }
    }
}
