package dev.calibquant.stress;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.attention.CpuCalibQuantAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.testing.Fp16Data;
import dev.calibquant.testing.Seeds;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Test;

/**
 * The manager's thread-safety contract under load (host storage): four threads create, fill, append to (one at a
 * time and in batches), decode and close sequences of one manager, at least 10⁵ operations in all. Every decode
 * output equals, bit for bit, the same operations replayed on a private manager by one thread; nothing deadlocks
 * (bounded time); the manager holds zero bytes at the end and closes without a leak report.
 */
class ManagerStressTest {
    static final ModelGeometry GEOMETRY = new ModelGeometry(2, 4, 2, 16);
    static final int THREADS = 4;
    static final long OPERATIONS = 100_000;

    @Test
    void manyThreadsOnOneManagerMatchOneThreadAlone() throws Exception {
        long seed = Seeds.fresh("ManagerStressTest");
        AtomicLong operations = new AtomicLong();
        CpuCalibQuantAttention attention = new CpuCalibQuantAttention(QuantConfig.defaults(1).calibration());
        try (KvCacheManager shared = KvCacheManager.onHost(GEOMETRY, DType.FP16, 64L << 20)) {
            ExecutorService pool = Executors.newFixedThreadPool(THREADS);
            try {
                List<Future<Long>> done = new ArrayList<>();
                for (int t = 0; t < THREADS; t++) {
                    Random random = new Random(seed + t);
                    done.add(pool.submit(() -> work(shared, attention, random, operations)));
                }
                long mismatches = 0;
                for (Future<Long> f : done) {
                    mismatches += f.get(5, TimeUnit.MINUTES);
                }
                assertThat(mismatches).as("seed %d: decodes that differ from the one-thread replay", seed).isZero();
            } finally {
                pool.shutdownNow();
            }
            assertThat(operations.get()).isGreaterThanOrEqualTo(OPERATIONS);
            assertThat(shared.openSequences()).isZero();
            assertThat(shared.usage().totalBytes()).isZero();
        } // close would throw CacheLeakException for a sequence left open
        System.out.printf("[calibquant] ManagerStressTest: %d operations on %d threads, seed %d%n", operations.get(),
                THREADS, seed);
    }

    /** Rounds of: two sequences created and filled, appends (single and batch) and decodes, then closed. */
    private static long work(KvCacheManager shared, CpuCalibQuantAttention attention, Random random, AtomicLong ops) {
        long mismatches = 0;
        int kvh = GEOMETRY.kvHeads();
        int d = GEOMETRY.headDim();
        while (ops.get() < OPERATIONS) {
            int prompt = 8 + random.nextInt(40);
            List<TokenSpan> spans = List.of(new TokenSpan(2, 2 + 1 + random.nextInt(prompt - 4)));
            try (Arena arena = Arena.ofConfined(); KvCacheManager alone = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
                List<Sequence> mine = new ArrayList<>();
                List<Sequence> replay = new ArrayList<>();
                for (int s = 0; s < 2; s++) {
                    mine.add(shared.createSequence(prompt, spans, QuantConfig.defaults(1)));
                    replay.add(alone.createSequence(prompt, spans, QuantConfig.defaults(1)));
                    ops.incrementAndGet();
                    for (int l = 0; l < GEOMETRY.layers(); l++) {
                        MemorySegment k = Fp16Data.fp16(arena, Fp16Data.normal(random, kvh, prompt, d, 2));
                        MemorySegment v = Fp16Data.fp16(arena, Fp16Data.normal(random, kvh, prompt, d, 0));
                        mine.get(s).fill(l, k, v, DType.FP16);
                        replay.get(s).fill(l, k, v, DType.FP16);
                        ops.incrementAndGet();
                    }
                }
                int steps = 1 + random.nextInt(20);
                for (int step = 0; step < steps; step++) {
                    int layer = random.nextInt(GEOMETRY.layers());
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
                    MemorySegment q = Fp16Data.fp16(arena, Fp16Data.normal(random, 2, GEOMETRY.queryHeads(), d, 0));
                    MemorySegment a = arena.allocate(4L * 2 * GEOMETRY.queryHeads() * d);
                    MemorySegment b = arena.allocate(a.byteSize());
                    List<LayerKvView> views = List.of(mine.get(0).layer(layer), mine.get(1).layer(layer));
                    attention.decode(views, q, DType.FP16, GEOMETRY.queryHeads(), a);
                    attention.decode(List.of(replay.get(0).layer(layer), replay.get(1).layer(layer)), q, DType.FP16,
                            GEOMETRY.queryHeads(), b);
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
}
