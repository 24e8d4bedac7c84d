package dev.calibquant.sharding;

import static dev.calibquant.sharding.Workload.GEOMETRY;
import static dev.calibquant.sharding.Workload.ONE_BIT;
import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.attention.ReferenceAttention;
import dev.calibquant.cache.CacheMemoryLimitException;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.MemoryUsage;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.gpu.DecodeErrorBound;
import dev.calibquant.gpu.DecodeStepInfo;
import dev.calibquant.gpu.DeviceKvCache;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.NonFiniteInputException;
import dev.calibquant.sharding.Workload.Pair;
import dev.calibquant.testing.GpuFixture;
import dev.calibquant.testing.GpuTest;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

/**
 * The sharded set over several {@link DeviceKvCache}s of device 0's one context (each its own memory, kernels and
 * stream): what runs on one GPU of what {@link ShardedKvCacheTest} checks on the CPU. The twin of every sequence lives
 * in one unsharded device cache: BY_SEQUENCE outputs equal its decode of each shard's part of the batch bit for bit
 * (the same sequences, in the same order, make the same kernel plan); every output keeps {@link DecodeErrorBound}'s
 * bound against the double-precision CPU reference on the downloaded layers; layers download bit for bit as the
 * unsharded cache holds them (BY_KV_HEAD too: the GPU quantizer's statistics are per KV head).
 */
@GpuTest
class ShardedDeviceKvCacheGpuTest {
    @RegisterExtension
    final GpuFixture gpu = new GpuFixture();

    static final long LIMIT = 24L << 20;
    static final Calibration CALIBRATION = ONE_BIT.calibration();

    private List<CudaContext> contexts(int n) {
        return Collections.nCopies(n, gpu.context());
    }

    private Workload workload(Arena arena) {
        return new Workload(gpu.random(), arena);
    }

    private static List<Pair> filledPairs(Workload w, ShardedKvCache set, DeviceKvCache one, int count) {
        List<Pair> pairs = new ArrayList<>();
        for (int i = 0; i < count; i++) {
            pairs.add(w.filled(set, one.manager(), 200 + w.random.nextInt(400), i % 2 == 0 ? 0 : 8));
        }
        for (int step = 0; step < 3; step++) {
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                w.append(set, one.manager(), l, pairs);
            }
        }
        return pairs;
    }

    /** The set's decode of {@code batch}, and the shards' last steps (for the bound). */
    private static float[] shardedDecode(ShardedKvCache set, List<Pair> batch, int layer, MemorySegment q,
            Workload w) {
        MemorySegment out = w.output(batch.size());
        set.decode(CALIBRATION, layer, batch.stream().map(Pair::sharded).toList(), q, DType.FP16,
                GEOMETRY.queryHeads(), out);
        return out.toArray(Elements.FLOAT_LE);
    }

    private static DecodeStepInfo lastStep(ShardedKvCache set, int shard) {
        CacheShard s = set.shards().get(shard);
        DeviceCacheShard device = (DeviceCacheShard) (s instanceof FlakyShard flaky ? flaky.inner : s);
        return device.deviceCache().attention(CALIBRATION).lastStep();
    }

    /** Every output row against the CPU reference on the set's downloaded layers, within the GPU bound. */
    private void assertWithinBoundOfTheCpu(ShardedKvCache set, List<Pair> batch, int layer, MemorySegment q,
            float[] out, Arena arena) {
        List<LayerKvView> host = new ArrayList<>();
        for (Pair p : batch) {
            host.add(p.sharded().download(layer, arena));
        }
        MemorySegment cpu = arena.allocate(4L * out.length, 64);
        new ReferenceAttention(CALIBRATION).decode(host, q, DType.FP16, GEOMETRY.queryHeads(), cpu);
        int d = GEOMETRY.headDim();
        for (int b = 0; b < batch.size(); b++) {
            int items = 0;
            int block = 0;
            for (int shard : batch.get(b).sharded().shards()) { // the largest of the steps that decoded it
                DecodeStepInfo step = lastStep(set, shard);
                items = Math.max(items, step.workItems());
                block = Math.max(block, step.tokenBlock());
            }
            for (int h = 0; h < GEOMETRY.queryHeads(); h++) {
                int row = (b * GEOMETRY.queryHeads() + h) * d;
                float[] query = new float[d];
                for (int j = 0; j < d; j++) {
                    query[j] = Elements.read(q, DType.FP16, row + j);
                }
                double tol = DecodeErrorBound.attentionTolerance(query, host.get(b), items, block);
                for (int j = 0; j < d; j++) {
                    float c = cpu.getAtIndex(Elements.FLOAT_LE, row + j);
                    assertThat((double) Math.abs(out[row + j] - c))
                            .as("seed %d: out[%d][%d][%d] GPU %s CPU %s", gpu.seed(), b, h, j, out[row + j], c)
                            .isLessThanOrEqualTo(tol);
                }
            }
        }
    }

    /** The unsharded cache's decode of each shard's part of {@code batch}, in the order the set gives them. */
    private static float[] oneDeviceDecodeByShard(DeviceKvCache one, List<Pair> batch, int layer, MemorySegment q,
            Workload w) {
        int row = GEOMETRY.queryHeads() * GEOMETRY.headDim();
        float[] expected = new float[batch.size() * row];
        List<Integer> shards = batch.stream().map(p -> p.sharded().shards().getFirst()).distinct().toList();
        for (int shard : shards) {
            List<Integer> items = new ArrayList<>();
            for (int b = 0; b < batch.size(); b++) {
                if (batch.get(b).sharded().shards().getFirst() == shard) {
                    items.add(b);
                }
            }
            MemorySegment part = w.arena.allocate(2L * items.size() * row, 64);
            for (int j = 0; j < items.size(); j++) {
                MemorySegment.copy(q, 2L * items.get(j) * row, part, 2L * j * row, 2L * row);
            }
            MemorySegment out = w.output(items.size());
            one.attention(CALIBRATION).decode(layer, items.stream().map(b -> batch.get(b).reference()).toList(),
                    part, DType.FP16, GEOMETRY.queryHeads(), out);
            for (int j = 0; j < items.size(); j++) {
                MemorySegment.copy(out, Elements.FLOAT_LE, 4L * j * row, expected, items.get(j) * row, row);
            }
        }
        return expected;
    }

    private static void closeAll(List<Pair> pairs) {
        for (Pair p : pairs) {
            p.sharded().close();
            p.reference().close();
        }
    }

    @Test
    void bySequenceOutputsEqualOneDeviceCacheBitForBitAndKeepTheBoundAgainstTheCpu() {
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = ShardedKvCache.onDevices(contexts(3), GEOMETRY, LIMIT,
                        Placement.BY_SEQUENCE_MOST_FREE);
                DeviceKvCache one = DeviceKvCache.open(gpu.context(), GEOMETRY, 4 * LIMIT)) {
            Workload w = workload(arena);
            List<Pair> pairs = filledPairs(w, set, one, 7);
            assertThat(pairs.stream().map(p -> p.sharded().shards().getFirst()).distinct()).hasSize(3);
            List<Pair> batch = new ArrayList<>(pairs);
            Collections.shuffle(batch, w.random);
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                MemorySegment q = w.queries(batch.size());
                float[] out = shardedDecode(set, batch, l, q, w);
                assertThat(out).as("seed %d layer %d", gpu.seed(), l)
                        .isEqualTo(oneDeviceDecodeByShard(one, batch, l, q, w));
                assertWithinBoundOfTheCpu(set, batch, l, q, out, arena);
                for (Pair p : pairs) {
                    Workload.assertSameLayer(p.sharded().download(l, arena), one.download(p.reference(), l, arena),
                            p.sharded() + " layer " + l);
                }
            }
            MemoryUsage sum = MemoryUsage.ZERO;
            for (CacheShard s : set.shards()) {
                sum = sum.plus(s.usage());
            }
            assertThat(set.usage()).isEqualTo(sum).isEqualTo(one.manager().usage());
            closeAll(pairs);
            assertThat(set.usage()).isEqualTo(MemoryUsage.ZERO);
        }
    }

    @Test
    void byKvHeadHoldsTheSameBytesAsOneDeviceCacheAndKeepsTheBoundAgainstTheCpu() {
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = ShardedKvCache.onDevices(contexts(2), GEOMETRY, LIMIT, Placement.BY_KV_HEAD);
                DeviceKvCache one = DeviceKvCache.open(gpu.context(), GEOMETRY, 2 * LIMIT)) {
            Workload w = workload(arena);
            List<Pair> pairs = filledPairs(w, set, one, 5);
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                MemorySegment q = w.queries(pairs.size());
                assertWithinBoundOfTheCpu(set, pairs, l, q, shardedDecode(set, pairs, l, q, w), arena);
                for (Pair p : pairs) {
                    Workload.assertSameLayer(p.sharded().download(l, arena), one.download(p.reference(), l, arena),
                            p.sharded() + " layer " + l);
                }
            }
            MemoryUsage all = one.manager().usage();
            for (CacheShard s : set.shards()) {
                assertThat(s.usage()).isEqualTo(new MemoryUsage(all.fullPrecisionBytes() / 2,
                        all.visualCodeBytes() / 2, all.visualScaleBytes() / 2, all.fp16Bytes() / 2));
            }
            closeAll(pairs);
        }
    }

    @Test
    void aMovedSequenceDownloadsAndDecodesBitForBitAsBefore() {
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = ShardedKvCache.onDevices(contexts(2), GEOMETRY, LIMIT,
                        Placement.BY_SEQUENCE_ROUND_ROBIN);
                DeviceKvCache one = DeviceKvCache.open(gpu.context(), GEOMETRY, LIMIT)) {
            Workload w = workload(arena);
            Pair p = filledPairs(w, set, one, 1).getFirst();
            assertThat(p.sharded().shards()).containsExactly(0);
            List<LayerKvView> before = new ArrayList<>();
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                before.add(p.sharded().download(l, arena));
            }
            MemorySegment q = w.queries(1);
            float[] decoded = shardedDecode(set, List.of(p), 1, q, w);
            MemoryUsage held = p.sharded().usage();
            set.move(p.sharded(), 1);
            assertThat(p.sharded().shards()).containsExactly(1);
            assertThat(set.shards().get(0).usage()).isEqualTo(MemoryUsage.ZERO);
            assertThat(set.shards().get(1).usage()).isEqualTo(held);
            assertThat(((DeviceCacheShard) set.shards().get(0)).deviceCache().usedDeviceBytes()).isZero();
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                Workload.assertSameLayer(p.sharded().download(l, arena), before.get(l), "moved layer " + l);
            }
            assertThat(shardedDecode(set, List.of(p), 1, q, w)).isEqualTo(decoded);
            w.append(set, one.manager(), 1, List.of(p));
            MemorySegment q2 = w.queries(1);
            assertThat(shardedDecode(set, List.of(p), 1, q2, w))
                    .isEqualTo(oneDeviceDecodeByShard(one, List.of(p), 1, q2, w));
            closeAll(List.of(p));
        }
    }

    @Test
    void aShardFailingInDecodeIsNamedAndTheOtherShardsRunAtTheSameTime() {
        ModelGeometry each = ShardedKvCache.shardGeometry(GEOMETRY, Placement.BY_KV_HEAD, 2);
        FlakyShard first = new FlakyShard(DeviceCacheShard.open("first", gpu.context(), each, LIMIT));
        FlakyShard second = new FlakyShard(DeviceCacheShard.open("second", gpu.context(), each, LIMIT));
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = ShardedKvCache.of(GEOMETRY, Placement.BY_KV_HEAD, List.of(first, second));
                DeviceKvCache one = DeviceKvCache.open(gpu.context(), GEOMETRY, 2 * LIMIT)) {
            Workload w = workload(arena);
            List<Pair> pairs = filledPairs(w, set, one, 3);
            CyclicBarrier meet = new CyclicBarrier(2);
            first.meet = meet;
            second.meet = meet;
            MemorySegment q = w.queries(pairs.size());
            assertWithinBoundOfTheCpu(set, pairs, 0, q, shardedDecode(set, pairs, 0, q, w), arena);
            assertThat(List.of(first.decodedOn, second.decodedOn))
                    .containsExactly("calibquant-shard-first", "calibquant-shard-second");
            first.meet = null;
            second.meet = null;
            second.failing = true;
            MemorySegment out = w.output(pairs.size());
            assertThatThrownBy(() -> set.decode(CALIBRATION, 1, pairs.stream().map(Pair::sharded).toList(),
                    w.queries(pairs.size()), DType.FP16, GEOMETRY.queryHeads(), out))
                    .isInstanceOf(ShardFailureException.class).hasMessageContaining("shard 'second' failed decoding");
            for (long i = 0; i < out.byteSize() / 4; i++) {
                assertThat(out.getAtIndex(Elements.FLOAT_LE, i)).isNaN();
            }
            second.failing = false;
            w.append(set, one.manager(), 1, pairs);
            MemorySegment q2 = w.queries(pairs.size());
            assertWithinBoundOfTheCpu(set, pairs, 1, q2, shardedDecode(set, pairs, 1, q2, w), arena);
            closeAll(pairs);
        }
    }

    @Test
    void refusalsChangeNothingOnAnyDevice() {
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = ShardedKvCache.onDevices(contexts(2), GEOMETRY, 400_000, Placement.BY_KV_HEAD)) {
            Workload w = workload(arena);
            Workload.Prompt big = w.prompt(3000); // at least 751 full-precision rows: more than 400,000 bytes
            ShardedSequence s = set.createSequence(big.tokens(), big.spans(), ONE_BIT, 0);
            assertThatThrownBy(() -> s.fill(0, big.keys()[0], big.values()[0], DType.FP16))
                    .isInstanceOf(CacheMemoryLimitException.class).hasMessageContaining("on shard 'cuda:");
            Workload.Prompt p = w.prompt(100);
            ShardedSequence t = set.createSequence(p.tokens(), p.spans(), ONE_BIT, 0);
            MemorySegment nan = arena.allocate(p.keys()[1].byteSize(), 64).copyFrom(p.keys()[1]);
            Elements.write(nan, DType.FP16, (3L * p.tokens() + 4) * GEOMETRY.headDim(), Float.NaN); // shard 1's
            assertThatThrownBy(() -> t.fill(1, nan, p.values()[1], DType.FP16))
                    .isInstanceOf(NonFiniteInputException.class).hasMessageContaining("at head 3, token 4, channel 0");
            assertThat(set.usage()).isEqualTo(MemoryUsage.ZERO);
            for (CacheShard shard : set.shards()) {
                assertThat(((DeviceCacheShard) shard).deviceCache().usedDeviceBytes()).isZero();
            }
            s.close();
            t.close();
        }
    }

    @Test
    void severalThreadsDecodeOnTheirShardsAsOneDeviceCacheDoes() throws Exception {
        int threads = 3;
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = ShardedKvCache.onDevices(contexts(threads), GEOMETRY, LIMIT,
                        Placement.BY_SEQUENCE_ROUND_ROBIN);
                DeviceKvCache one = DeviceKvCache.open(gpu.context(), GEOMETRY, threads * LIMIT)) {
            long seed = gpu.seed();
            ExecutorService pool = Executors.newFixedThreadPool(threads);
            try {
                List<Future<?>> done = new ArrayList<>();
                for (int t = 0; t < threads; t++) {
                    int shard = t;
                    Workload w = new Workload(new Random(seed + t), arena);
                    done.add(pool.submit(() -> {
                        List<Pair> pairs = new ArrayList<>();
                        for (int i = 0; i < 2; i++) {
                            Workload.Prompt p = w.prompt(150 + 50 * i);
                            Pair pair = new Pair(set.createSequenceOn(shard, p.tokens(), p.spans(), ONE_BIT, 16),
                                    one.manager().createSequence(p.tokens(), p.spans(), ONE_BIT, 16));
                            for (int l = 0; l < GEOMETRY.layers(); l++) {
                                pair.sharded().fill(l, p.keys()[l], p.values()[l], DType.FP16);
                                pair.reference().fill(l, p.keys()[l], p.values()[l], DType.FP16);
                            }
                            pairs.add(pair);
                        }
                        for (int round = 0; round < 10; round++) {
                            int layer = round % GEOMETRY.layers();
                            w.append(set, one.manager(), layer, pairs);
                            MemorySegment q = w.queries(pairs.size());
                            assertThat(shardedDecode(set, pairs, layer, q, w)).as("seed %d round %d", seed, round)
                                    .isEqualTo(oneDeviceDecodeByShard(one, pairs, layer, q, w));
                        }
                        closeAll(pairs);
                        return null;
                    }));
                }
                for (Future<?> f : done) {
                    f.get(5, TimeUnit.MINUTES);
                }
            } finally {
                pool.shutdownNow();
            }
            assertThat(set.usage()).isEqualTo(MemoryUsage.ZERO);
        }
    }
}
