package dev.calibquant.stress;

import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.testing.Fp16Data;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.atomic.AtomicLong;

/**
 * One stress thread's work, shared by the host and device stress tests: rounds of two sequences created and filled
 * (every layer), single and batch appends and decode steps, then closed — on the shared manager and, the same
 * operations, on a manager only this thread uses. Returns how many decode outputs differ, bit for bit, between the two.
 */
final class StressRounds {
    /** One decode step of {@code layer} over {@code batch} of {@code manager}, into {@code out}. */
    interface Decoder {
        void decode(int layer, List<Sequence> batch, MemorySegment queries, MemorySegment out);
    }

    private StressRounds() {}

    static long run(ModelGeometry g, int maxPrompt, KvCacheManager shared, Decoder sharedDecoder, KvCacheManager alone,
            Decoder aloneDecoder, Random random, AtomicLong ops, long target) {
        long mismatches = 0;
        int kvh = g.kvHeads();
        int d = g.headDim();
        while (ops.get() < target) {
            int prompt = 8 + random.nextInt(maxPrompt - 7);
            List<TokenSpan> spans = List.of(new TokenSpan(2, 2 + 1 + random.nextInt(prompt - 4)));
            try (Arena arena = Arena.ofConfined()) {
                List<Sequence> mine = new ArrayList<>();
                List<Sequence> replay = new ArrayList<>();
                for (int s = 0; s < 2; s++) {
                    mine.add(shared.createSequence(prompt, spans, QuantConfig.defaults(1)));
                    replay.add(alone.createSequence(prompt, spans, QuantConfig.defaults(1)));
                    ops.incrementAndGet();
                    for (int l = 0; l < g.layers(); l++) {
                        MemorySegment k = Fp16Data.fp16(arena, Fp16Data.normal(random, kvh, prompt, d, 2));
                        MemorySegment v = Fp16Data.fp16(arena, Fp16Data.normal(random, kvh, prompt, d, 0));
                        mine.get(s).fill(l, k, v, DType.FP16);
                        replay.get(s).fill(l, k, v, DType.FP16);
                        ops.incrementAndGet();
                    }
                }
                int steps = 1 + random.nextInt(20);
                for (int step = 0; step < steps; step++) {
                    int layer = random.nextInt(g.layers());
                    MemorySegment k = Fp16Data.fp16(arena, Fp16Data.normal(random, 2, kvh, d, 2));
                    MemorySegment v = Fp16Data.fp16(arena, Fp16Data.normal(random, 2, kvh, d, 0));
                    if (random.nextBoolean()) {
                        shared.append(layer, mine, k, v, DType.FP16);
                    } else {
                        long item = k.byteSize() / 2;
                        for (int s = 0; s < 2; s++) {
                            mine.get(s).append(layer, k.asSlice(s * item, item), v.asSlice(s * item, item), DType.FP16);
                        }
                    }
                    alone.append(layer, replay, k, v, DType.FP16);
                    ops.incrementAndGet();
                    MemorySegment q = Fp16Data.fp16(arena, Fp16Data.normal(random, 2, g.queryHeads(), d, 0));
                    MemorySegment a = arena.allocate(4L * 2 * g.queryHeads() * d);
                    MemorySegment b = arena.allocate(a.byteSize());
                    sharedDecoder.decode(layer, mine, q, a);
                    aloneDecoder.decode(layer, replay, q, b);
                    ops.incrementAndGet();
                    if (a.mismatch(b) != -1) {
                        mismatches++;
                    }
                }
                for (int s = 0; s < 2; s++) {
                    mine.get(s).close();
                    replay.get(s).close();
                    ops.incrementAndGet();
                }
            }
        }
        return mismatches;
    }

    /** The mismatches the stress threads report, waiting at most {@code minutes} for each. */
    static long mismatches(java.util.List<java.util.concurrent.Future<Long>> threads, long minutes) throws Exception {
        long mismatches = 0;
        for (java.util.concurrent.Future<Long> f : threads) {
            mismatches += f.get(minutes, java.util.concurrent.TimeUnit.MINUTES);
        }
        return mismatches;
    }
}
