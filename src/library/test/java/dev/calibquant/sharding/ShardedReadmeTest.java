package dev.calibquant.sharding;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.attention.CpuCalibQuantAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.testing.Fp16Data;
import dev.calibquant.testing.Seeds;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

/** The README's sample of the sharded cache: the same text as here, and it gives one unsharded cache's answer. */
class ShardedReadmeTest {
    private static final Path SOURCE = Path.of("src/library/test/java/dev/calibquant/sharding/ShardedReadmeTest.java");

    @Test
    void theReadmeShowsThisTestsCode() throws IOException {
        String readme = Files.readString(Path.of("README.md"));
        int section = readme.indexOf("## Several GPUs of one host: the sharded cache");
        assertThat(section).as("README section").isNotNegative();
        int start = readme.indexOf("```java\n", section) + "```java\n".length();
        String shown = readme.substring(start, readme.indexOf("```\n", start));
        String source = Files.readString(SOURCE);
        String begin = "// README begin\n";
        int from = source.indexOf(begin) + begin.length();
        String code = source.substring(from, source.indexOf("// README end", from));
        assertThat(normalize(shown)).isEqualTo(normalize(code));
    }

    /** Lines without their common indentation, trailing blanks and the closing braces at the end. */
    private static String normalize(String text) {
        List<String> lines = new ArrayList<>(text.lines().map(String::stripTrailing).filter(l -> !l.isEmpty())
                .toList());
        while (!lines.isEmpty() && lines.getLast().strip().equals("}")) {
            lines.removeLast();
        }
        int indent = lines.stream().mapToInt(l -> l.length() - l.stripLeading().length()).min().orElse(0);
        return String.join("\n", lines.stream().map(l -> l.substring(indent)).toList());
    }

    @Test
    void theSampleRunsAndDecodesAsOneUnshardedCache() {
        Random random = new Random(Seeds.fresh("ShardedReadmeTest"));
        ModelGeometry geometry = new ModelGeometry(2, 8, 4, 64);
        int prompt = 41 + 3328 + 64;
        try (Arena arena = Arena.ofShared();
                KvCacheManager unsharded = KvCacheManager.onHost(geometry, DType.FP16)) {
            MemorySegment keys = Fp16Data.fp16(arena, Fp16Data.normal(random, 4, prompt, 64, 2));
            MemorySegment values = Fp16Data.fp16(arena, Fp16Data.normal(random, 4, prompt, 64, 0));
            MemorySegment key = Fp16Data.fp16(arena, Fp16Data.normal(random, 1, 4, 64, 2));
            MemorySegment value = Fp16Data.fp16(arena, Fp16Data.normal(random, 1, 4, 64, 0));
            MemorySegment queries = Fp16Data.fp16(arena, Fp16Data.normal(random, 1, 8, 64, 0));
            MemorySegment out = arena.allocate(4L * 8 * 64);
            // README begin
            // on GPUs: ShardedKvCache.onDevices(List.of(ctx0, ctx1), geometry, limit, Placement.BY_KV_HEAD)
            try (ShardedKvCache cache = ShardedKvCache.onHost(geometry, DType.FP16, 2, 256L << 20,
                    Placement.BY_KV_HEAD)) { // each shard: half the KV heads and their query heads, 256 MB
                QuantConfig oneBit = QuantConfig.defaults(1);
                ShardedSequence s = cache.createSequence(prompt, List.of(new TokenSpan(41, 41 + 3328)), oneBit, 64);
                s.fill(0, keys, values, DType.FP16); // [kvHeads][prompt][headDim]: each shard its heads, no copy
                cache.append(0, List.of(s), key, value, DType.FP16); // [batch][kvHeads][headDim], all shards at once
                cache.decode(oneBit.calibration(), 0, List.of(s), queries, DType.FP16, geometry.queryHeads(), out);
                System.out.println(cache.usage() + " on " + cache.shards().size() + " shards");
                s.close();
                // README end
                Sequence r = unsharded.createSequence(prompt, List.of(new TokenSpan(41, 41 + 3328)), oneBit, 64);
                r.fill(0, keys, values, DType.FP16);
                r.append(0, key, value, DType.FP16);
                MemorySegment expected = arena.allocate(out.byteSize());
                new CpuCalibQuantAttention(oneBit.calibration()).decode(List.of(r.layer(0)), queries, DType.FP16,
                        geometry.queryHeads(), expected);
                assertThat(out.toArray(Elements.FLOAT_LE)).isEqualTo(expected.toArray(Elements.FLOAT_LE));
                r.close();
            }
        }
    }
}
