package dev.calibquant.sharding;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import dev.calibquant.testing.Fp16Data;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.Random;

/**
 * Random fp16 prompts and steps, given alike to a sharded set and to one unsharded cache (the reference), for the
 * sharding tests on the CPU and the GPU. Data lives in {@code arena} (shared, so fills run on the shards' threads).
 */
final class Workload {
    static final ModelGeometry GEOMETRY = new ModelGeometry(2, 8, 4, 64);
    static final QuantConfig ONE_BIT = QuantConfig.defaults(1);

    final Random random;
    final Arena arena;

    Workload(Random random, Arena arena) {
        this.random = random;
        this.arena = arena;
    }

    /** {@code [a][b][headDim]} normal values rounded to fp16 (two outlier channels). */
    MemorySegment fp16(int a, int b) {
        return Fp16Data.fp16(arena, Fp16Data.normal(random, a, b, GEOMETRY.headDim(), 2));
    }

    /** A prompt of {@code tokens} tokens with one visual span, keys and values for every layer. */
    record Prompt(int tokens, List<TokenSpan> spans, MemorySegment[] keys, MemorySegment[] values) {}

    Prompt prompt(int tokens) {
        int start = 1 + random.nextInt(8);
        int length = tokens / 2 + random.nextInt(tokens / 4);
        MemorySegment[] keys = new MemorySegment[GEOMETRY.layers()];
        MemorySegment[] values = new MemorySegment[GEOMETRY.layers()];
        for (int l = 0; l < keys.length; l++) {
            keys[l] = fp16(GEOMETRY.kvHeads(), tokens);
            values[l] = fp16(GEOMETRY.kvHeads(), tokens);
        }
        return new Prompt(tokens, List.of(new TokenSpan(start, start + length)), keys, values);
    }

    /** A sequence of the set and its twin in the reference cache. */
    record Pair(ShardedSequence sharded, Sequence reference) {}

    /** Creates and fills a pair with a fresh prompt of {@code tokens} tokens. */
    Pair filled(ShardedKvCache set, KvCacheManager reference, int tokens, int reserved) {
        Prompt p = prompt(tokens);
        Pair pair = new Pair(set.createSequence(p.tokens(), p.spans(), ONE_BIT, reserved),
                reference.createSequence(p.tokens(), p.spans(), ONE_BIT, reserved));
        for (int l = 0; l < GEOMETRY.layers(); l++) {
            pair.sharded().fill(l, p.keys()[l], p.values()[l], DType.FP16);
            pair.reference().fill(l, p.keys()[l], p.values()[l], DType.FP16);
        }
        return pair;
    }

    /** One step appended to every pair, through the set's batch append and the reference's. */
    void append(ShardedKvCache set, KvCacheManager reference, int layer, List<Pair> batch) {
        MemorySegment keys = fp16(batch.size(), GEOMETRY.kvHeads());
        MemorySegment values = fp16(batch.size(), GEOMETRY.kvHeads());
        set.append(layer, batch.stream().map(Pair::sharded).toList(), keys, values, DType.FP16);
        reference.append(layer, batch.stream().map(Pair::reference).toList(), keys, values, DType.FP16);
    }

    /** Fresh fp16 queries for a batch. */
    MemorySegment queries(int batch) {
        return fp16(batch, GEOMETRY.queryHeads());
    }

    /** An fp32 output for a batch, every element NaN, so an element never written cannot pass for a result. */
    MemorySegment output(int batch) {
        MemorySegment out = arena.allocate(4L * batch * GEOMETRY.queryHeads() * GEOMETRY.headDim(), 64);
        for (long i = 0; i < out.byteSize() / 4; i++) {
            out.setAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, i, Float.NaN);
        }
        return out;
    }

    /** Every byte of both layers (full-precision block up to the capacity, every span segment) is the same. */
    static void assertSameLayer(LayerKvView actual, LayerKvView expected, String what) {
        assertThat(actual.kvHeads()).as(what).isEqualTo(expected.kvHeads());
        assertThat(actual.fullTokens()).as(what).isEqualTo(expected.fullTokens());
        assertThat(actual.fullCapacity()).as(what).isEqualTo(expected.fullCapacity());
        assertThat(actual.fullKeys().mismatch(expected.fullKeys())).as(what + " full keys").isEqualTo(-1);
        assertThat(actual.fullValues().mismatch(expected.fullValues())).as(what + " full values").isEqualTo(-1);
        assertThat(actual.visualSpans()).as(what).hasSameSizeAs(expected.visualSpans());
        for (int i = 0; i < actual.visualSpans().size(); i++) {
            QuantizedSpan a = actual.visualSpans().get(i);
            QuantizedSpan e = expected.visualSpans().get(i);
            for (int part = 0; part < 6; part++) {
                assertThat(segment(a, part).mismatch(segment(e, part))).as("%s span %d part %d", what, i, part)
                        .isEqualTo(-1);
            }
        }
    }

    private static MemorySegment segment(QuantizedSpan q, int part) {
        return switch (part) {
            case 0 -> q.keyCodes();
            case 1 -> q.valueCodes();
            case 2 -> q.keyScale();
            case 3 -> q.keyOffset();
            case 4 -> q.valueScale();
            default -> q.valueOffset();
        };
    }
}
