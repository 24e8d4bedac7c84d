package dev.calibquant.stress;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.gpu.DeviceDecodeAttention;
import dev.calibquant.gpu.DeviceKvCache;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.testing.GpuFixture;
import dev.calibquant.testing.GpuTest;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

/**
 * {@link ManagerStressTest} on the device: four threads create, fill (quantizing on the GPU), append to (one at a
 * time and in batch launches), decode on the GPU and close sequences of one {@link DeviceKvCache}, at least 10⁵
 * operations in all. Each thread replays its operations on a device cache of its own, which no other thread touches;
 * every decode output equals the replay's bit for bit (the kernels are deterministic for given inputs, wherever the
 * blocks lie in device memory). Nothing deadlocks (bounded time); the shared cache holds zero bytes at the end and
 * every cache closes without a leak report.
 */
@GpuTest
class DeviceManagerStressGpuTest {
    static final ModelGeometry GEOMETRY = new ModelGeometry(2, 8, 2, 64);
    static final int THREADS = 4;
    /** At least 10⁵; fewer ({@code -Dcalibquant.stress.operations}) where a sanitizer slows every launch. */
    static final long OPERATIONS = Long.getLong("calibquant.stress.operations", 100_000);

    @RegisterExtension
    final GpuFixture gpu = new GpuFixture();

    @Test
    void manyThreadsOnOneDeviceCacheMatchOneThreadAlone() throws Exception {
        long seed = gpu.seed();
        AtomicLong operations = new AtomicLong();
        long start = System.nanoTime();
        var calibration = QuantConfig.defaults(1).calibration();
        try (DeviceKvCache shared = DeviceKvCache.open(gpu.context(), GEOMETRY, 64L << 20)) {
            DeviceDecodeAttention sharedAttention = shared.attention(calibration);
            StressRounds.Decoder onShared = (layer, batch, q, out) ->
                    sharedAttention.decode(layer, batch, q, DType.FP16, GEOMETRY.queryHeads(), out);
            ExecutorService pool = Executors.newFixedThreadPool(THREADS);
            try {
                List<Future<Long>> done = new ArrayList<>();
                for (int t = 0; t < THREADS; t++) {
                    Random random = new Random(seed + t);
                    done.add(pool.submit(() -> {
                        try (DeviceKvCache alone = DeviceKvCache.open(gpu.context(), GEOMETRY, 16L << 20)) {
                            DeviceDecodeAttention own = alone.attention(calibration);
                            return StressRounds.run(GEOMETRY, 200, shared.manager(), onShared, alone.manager(),
                                    (layer, batch, q, out) -> own.decode(layer, batch, q, DType.FP16,
                                            GEOMETRY.queryHeads(), out),
                                    random, operations, OPERATIONS);
                        }
                    }));
                }
                long mismatches = StressRounds.mismatches(done, 10);
                assertThat(mismatches).as("seed %d: decodes that differ from the one-thread replay", seed).isZero();
            } finally {
                pool.shutdownNow();
            }
            assertThat(operations.get()).isGreaterThanOrEqualTo(OPERATIONS);
            assertThat(shared.manager().openSequences()).isZero();
            assertThat(shared.manager().usage().totalBytes()).isZero();
            assertThat(shared.usedDeviceBytes()).isZero();
        }
        System.out.printf("[calibquant] DeviceManagerStressGpuTest: %d operations on %d threads in %.1f s, seed %d%n",
                operations.get(), THREADS, (System.nanoTime() - start) / 1e9, seed);
    }
}
