package dev.calibquant.gpu;

import dev.calibquant.testing.Fp16Data;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.attention.ReferenceAttention;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.cuda.Cuda;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.testing.GpuTest;
import dev.calibquant.testing.Seeds;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

/** The README's sample of the device KV cache: the same text as here, and it runs and gives the right answer. */
class DeviceKvCacheReadmeGpuTest {
    private static final Path SOURCE = Path.of("src/library/test/java/dev/calibquant/gpu/DeviceKvCacheReadmeGpuTest.java");

    @Test
    void theReadmeShowsThisTestsCode() throws IOException {
        String readme = Files.readString(Path.of("README.md"));
        int section = readme.indexOf("## Embedding: the KV cache in GPU memory");
        assertThat(section).as("README section").isNotNegative();
        int start = readme.indexOf("```java\n", section) + "```java\n".length();
        String shown = readme.substring(start, readme.indexOf("```\n", start));
        String source = Files.readString(SOURCE);
        String begin = "// README begin\n";
        int from = source.indexOf(begin) + begin.length();
        String code = source.substring(from, source.indexOf("// README end", from));
        assertThat(normalize(shown)).isEqualTo(normalize(code));
    }

    /**
     * Lines without their common indentation, trailing blanks and the closing braces at the end (the README closes
     * the blocks the test goes on in).
     */
    private static String normalize(String text) {
        List<String> lines = new java.util.ArrayList<>(text.lines().map(String::stripTrailing)
                .filter(l -> !l.isEmpty()).toList());
        while (!lines.isEmpty() && lines.getLast().strip().equals("}")) {
            lines.removeLast();
        }
        int indent = lines.stream().mapToInt(l -> l.length() - l.stripLeading().length()).min().orElse(0);
        return String.join("\n", lines.stream().map(l -> l.substring(indent)).toList());
    }

    @Test
    @GpuTest
    void theReadmeSampleRunsAndMatchesTheReference() {
        long seed = Seeds.fresh(getClass().getSimpleName());
        Random random = new Random(seed);
        ModelGeometry geometry = new ModelGeometry(1, 32, 8, 128);
        int prompt = 41 + 3328 + 64;
        float[] qf = Fp16Data.normal(random, 1, 32, 128, 0);
        try (Arena inputs = Arena.ofConfined()) {
            MemorySegment keys = Fp16Data.fp16(inputs, Fp16Data.normal(random, 8, prompt, 128, 4));
            MemorySegment values = Fp16Data.fp16(inputs, Fp16Data.normal(random, 8, prompt, 128, 0));
            MemorySegment key = Fp16Data.fp16(inputs, Fp16Data.normal(random, 1, 8, 128, 4));
            MemorySegment value = Fp16Data.fp16(inputs, Fp16Data.normal(random, 1, 8, 128, 0));
            MemorySegment queries = Fp16Data.fp16(inputs, qf);
            MemorySegment out = inputs.allocate(4L * 32 * 128);
            double[] worst = {0};
            // README begin
            try (CudaContext ctx = Cuda.device(0).openContext();
                    DeviceKvCache cache = DeviceKvCache.open(ctx, geometry, 256L << 20); // kernels loaded, memory reserved
                    Arena arena = Arena.ofConfined()) {
                QuantConfig oneBit = QuantConfig.defaults(1);
                DeviceDecodeAttention attention = cache.attention(oneBit.calibration()); // owned by the cache
                Sequence s = cache.manager().createSequence(prompt, List.of(new TokenSpan(41, 41 + 3328)), oneBit);
                s.fill(0, keys, values, DType.FP16);    // host [kvHeads][prompt][headDim]: one upload, quantized on the GPU
                cache.manager().append(0, List.of(s), key, value, DType.FP16); // [batch][kvHeads][headDim]: one launch
                attention.decode(0, List.of(s), queries, DType.FP16, geometry.queryHeads(), out); // fp32, on the host
                LayerKvView copy = cache.download(s, 0, arena); // the layer in host memory, for the CPU reference
                System.out.println(cache.manager().usage() + "; " + cache.deviceBytes() + " device bytes reserved");
                s.close();
                // README end
                worst[0] = worstRatio(copy, qf, queries, out, oneBit, attention);
            }
            assertThat(worst[0]).as("worst error / tolerance, seed " + seed).isLessThanOrEqualTo(1);
        }
    }

    private static double worstRatio(LayerKvView copy, float[] qf, MemorySegment queries, MemorySegment out,
            QuantConfig config, DeviceDecodeAttention attention) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment cpu = arena.allocate(out.byteSize());
            new ReferenceAttention(config.calibration()).decode(List.of(copy), queries, DType.FP16, 32, cpu);
            double worst = 0;
            for (int h = 0; h < 32; h++) {
                double tol = DecodeErrorBound.attentionTolerance(Arrays.copyOfRange(qf, h * 128, h * 128 + 128), copy,
                        attention.lastStep());
                for (int j = 0; j < 128; j++) {
                    float g = out.getAtIndex(ValueLayout.JAVA_FLOAT, h * 128 + j);
                    float c = cpu.getAtIndex(ValueLayout.JAVA_FLOAT, h * 128 + j);
                    worst = Math.max(worst, Float.isFinite(g) ? Math.abs(g - c) / tol : Double.POSITIVE_INFINITY);
                }
            }
            return worst;
        }
    }
}
