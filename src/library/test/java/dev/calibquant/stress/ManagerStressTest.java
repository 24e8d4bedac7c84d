package dev.calibquant.stress;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.attention.CpuCalibQuantAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.testing.Seeds;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
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
                    done.add(pool.submit(() -> {
                        try (KvCacheManager alone = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
                            StressRounds.Decoder cpu = (layer, batch, q, out) -> attention.decode(
                                    batch.stream().map(s -> s.layer(layer)).toList(), q, DType.FP16,
                                    GEOMETRY.queryHeads(), out);
                            return StressRounds.run(GEOMETRY, 48, shared, cpu, alone, cpu, random, operations,
                                    OPERATIONS);
                        }
                    }));
                }
                long mismatches = StressRounds.mismatches(done, 5);
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
}
