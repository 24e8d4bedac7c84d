package dev.calibquant.sharding;

import static dev.calibquant.sharding.Workload.GEOMETRY;
import static dev.calibquant.sharding.Workload.ONE_BIT;
import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.attention.CpuCalibQuantAttention;
import dev.calibquant.cache.CacheLeakException;
import dev.calibquant.cache.CacheMemoryLimitException;
import dev.calibquant.cache.HostDelegate;
import dev.calibquant.cache.HostStorage;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.MemoryUsage;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.RowCopy;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.StorageBlock;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.NonFiniteInputException;
import dev.calibquant.sharding.Workload.Pair;
import dev.calibquant.testing.Seeds;
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
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The sharded set on the CPU ({@link HostCacheShard}s): placement, accounting, outputs equal bit for bit to one
 * unsharded cache's, refusals that change nothing, a shard failing mid-write undone on the others, a shard failing in
 * decode isolated, several threads on one set, and moving a sequence between shards.
 */
class ShardedKvCacheTest {
    static final Calibration CALIBRATION = ONE_BIT.calibration();
    static final long LIMIT = 64L << 20;

    private static Workload workload(String test, Arena arena) {
        return new Workload(new Random(Seeds.fresh("ShardedKvCacheTest." + test)), arena);
    }

    /** The reference decode: one unsharded host cache, the CPU attention. */
    private static float[] referenceDecode(List<Pair> batch, int layer, MemorySegment queries, Workload w) {
        MemorySegment out = w.output(batch.size());
        new CpuCalibQuantAttention(CALIBRATION).decode(batch.stream().map(p -> p.reference().layer(layer)).toList(),
                queries, DType.FP16, GEOMETRY.queryHeads(), out);
        return out.toArray(Elements.FLOAT_LE);
    }

    private static float[] shardedDecode(ShardedKvCache set, List<Pair> batch, int layer, MemorySegment queries,
            Workload w) {
        MemorySegment out = w.output(batch.size());
        set.decode(CALIBRATION, layer, batch.stream().map(Pair::sharded).toList(), queries, DType.FP16,
                GEOMETRY.queryHeads(), out);
        return out.toArray(Elements.FLOAT_LE);
    }

    /** Decodes {@code batch} on both and asserts equal bits, for every layer. */
    static void assertDecodesAsReference(ShardedKvCache set, List<Pair> batch, Workload w) {
        for (int l = 0; l < GEOMETRY.layers(); l++) {
            MemorySegment q = w.queries(batch.size());
            assertThat(shardedDecode(set, batch, l, q, w)).as("layer %d", l)
                    .isEqualTo(referenceDecode(batch, l, q, w));
        }
    }

    @ParameterizedTest
    @CsvSource({"BY_SEQUENCE_MOST_FREE, 3", "BY_SEQUENCE_ROUND_ROBIN, 2", "BY_KV_HEAD, 2", "BY_KV_HEAD, 4"})
    void outputsAndLayersEqualOneUnshardedCacheBitForBit(Placement placement, int shards) {
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = ShardedKvCache.onHost(GEOMETRY, DType.FP16, shards, LIMIT, placement);
                KvCacheManager reference = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Workload w = workload("equal-" + placement + "-" + shards, arena);
            List<Pair> pairs = new ArrayList<>();
            for (int i = 0; i < 7; i++) {
                pairs.add(w.filled(set, reference, 40 + w.random.nextInt(120), i % 2 == 0 ? 0 : 3));
            }
            for (int step = 0; step < 5; step++) { // past the reservations: layers grow
                for (int l = 0; l < GEOMETRY.layers(); l++) {
                    w.append(set, reference, l, pairs);
                }
            }
            List<Pair> shuffled = new ArrayList<>(pairs);
            Collections.shuffle(shuffled, w.random);
            assertDecodesAsReference(set, shuffled, w);
            assertDecodesAsReference(set, shuffled.subList(0, 3), w);
            assertDecodesAsReference(set, List.of(shuffled.get(4)), w);
            for (Pair p : pairs) {
                assertThat(p.sharded().tokens(1)).isEqualTo(p.reference().tokens(1));
                for (int l = 0; l < GEOMETRY.layers(); l++) {
                    Workload.assertSameLayer(p.sharded().download(l, arena), p.reference().layer(l),
                            p.sharded() + " layer " + l);
                }
            }
            // accounting: per shard, in total; BY_KV_HEAD holds exactly 1/n of every kind on each shard
            MemoryUsage sum = MemoryUsage.ZERO;
            for (CacheShard s : set.shards()) {
                sum = sum.plus(s.usage());
                assertThat(s.byteLimit()).isEqualTo(LIMIT);
                assertThat(s.freeBytes()).isEqualTo(LIMIT - s.usage().totalBytes());
                if (placement == Placement.BY_KV_HEAD) {
                    MemoryUsage r = reference.usage();
                    assertThat(s.usage()).isEqualTo(new MemoryUsage(r.fullPrecisionBytes() / shards,
                            r.visualCodeBytes() / shards, r.visualScaleBytes() / shards, r.fp16Bytes() / shards));
                }
            }
            assertThat(set.usage()).isEqualTo(sum).isEqualTo(reference.usage());
            MemoryUsage perSequence = MemoryUsage.ZERO;
            for (Pair p : pairs) {
                assertThat(p.sharded().usage()).isEqualTo(p.reference().usage());
                perSequence = perSequence.plus(p.sharded().usage());
                p.sharded().close();
                p.reference().close();
            }
            assertThat(perSequence).isEqualTo(sum);
            assertThat(set.usage()).isEqualTo(MemoryUsage.ZERO);
            assertThat(set.openSequences()).isZero();
        }
    }

    @Test
    void mostFreePlacementCountsFilledAndPendingBytesRoundRobinTakesTurns() {
        try (Arena arena = Arena.ofShared();
                ShardedKvCache free = ShardedKvCache.onHost(GEOMETRY, DType.FP16, 3, LIMIT,
                        Placement.BY_SEQUENCE_MOST_FREE);
                ShardedKvCache turns = ShardedKvCache.onHost(GEOMETRY, DType.FP16, 3, LIMIT,
                        Placement.BY_SEQUENCE_ROUND_ROBIN);
                KvCacheManager reference = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Workload w = workload("placement", arena);
            // created, not filled: each takes the shard the previous ones did not promise away
            ShardedSequence a = free.createSequence(200, List.of(), null, 0);
            ShardedSequence b = free.createSequence(100, List.of(), null, 0);
            ShardedSequence c = free.createSequence(100, List.of(), null, 0);
            assertThat(List.of(a.shards(), b.shards(), c.shards())).containsExactly(List.of(0), List.of(1),
                    List.of(2));
            // a holds the most (filled or pending alike): the next two go to b's and c's shards, then 1 again
            Pair d = w.filled(free, reference, 60, 0);
            assertThat(d.sharded().shards()).containsExactly(1);
            ShardedSequence e = free.createSequence(50);
            assertThat(e.shards()).containsExactly(2);
            ShardedSequence pinned = free.createSequenceOn(0, 50, List.of(), null, 0); // the placement hook
            assertThat(pinned.shards()).containsExactly(0);
            assertThatThrownBy(() -> free.createSequenceOn(3, 50, List.of(), null, 0))
                    .isInstanceOf(IndexOutOfBoundsException.class);

            List<Integer> order = new ArrayList<>();
            for (int i = 0; i < 7; i++) {
                order.add(turns.createSequence(30 + i).shards().getFirst());
                if (i == 2) {
                    turns.createSequenceOn(0, 30, List.of(), null, 0); // does not take a turn
                }
            }
            assertThat(order).containsExactly(0, 1, 2, 0, 1, 2, 0);
            for (ShardedKvCache set : List.of(free, turns)) {
                assertThatThrownBy(set::close).isInstanceOf(CacheLeakException.class); // left open on purpose
            }
            d.reference().close();
        }
    }

    @Test
    void byKvHeadNeedsHeadsThatDivideEvenlyAndPlacesEverySequenceOnEveryShard() {
        assertThat(ShardedKvCache.shardGeometry(GEOMETRY, Placement.BY_KV_HEAD, 2))
                .isEqualTo(new ModelGeometry(2, 4, 2, 64));
        assertThat(ShardedKvCache.shardGeometry(GEOMETRY, Placement.BY_SEQUENCE_MOST_FREE, 3)).isEqualTo(GEOMETRY);
        assertThatThrownBy(() -> ShardedKvCache.onHost(GEOMETRY, DType.FP16, 3, LIMIT, Placement.BY_KV_HEAD))
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("BY_KV_HEAD splits the 4 KV heads evenly across the shards, and 3 shards do not "
                        + "divide them");
        assertThatThrownBy(() -> ShardedKvCache.shardGeometry(GEOMETRY, Placement.BY_KV_HEAD, 0))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("at least one shard");
        List<CacheShard> wrong = List.of(HostCacheShard.onHost("a", GEOMETRY, DType.FP16, LIMIT),
                HostCacheShard.onHost("b", GEOMETRY, DType.FP16, LIMIT));
        assertThatThrownBy(() -> ShardedKvCache.of(GEOMETRY, Placement.BY_KV_HEAD, wrong))
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("shard 'a' has geometry " + GEOMETRY);
        ModelGeometry half = new ModelGeometry(2, 4, 2, 64);
        List<CacheShard> sameName = List.of(HostCacheShard.onHost("a", half, DType.FP16, LIMIT),
                HostCacheShard.onHost("a", half, DType.FP16, LIMIT));
        assertThatThrownBy(() -> ShardedKvCache.of(GEOMETRY, Placement.BY_KV_HEAD, sameName))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("two shards are named 'a'");
        List<CacheShard> mixed = List.of(HostCacheShard.onHost("a", half, DType.FP16, LIMIT),
                HostCacheShard.onHost("b", half, DType.BF16, LIMIT));
        assertThatThrownBy(() -> ShardedKvCache.of(GEOMETRY, Placement.BY_KV_HEAD, mixed))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("shard 'b' stores BF16");
        assertThatThrownBy(() -> HostCacheShard.onHost(" ", half, DType.FP16, LIMIT))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("shard name");
        for (List<CacheShard> shards : List.of(wrong, sameName, mixed)) {
            shards.forEach(CacheShard::close); // refused: still the caller's
        }
        try (ShardedKvCache set = ShardedKvCache.onHost(GEOMETRY, DType.FP16, 4, LIMIT, Placement.BY_KV_HEAD)) {
            ShardedSequence s = set.createSequence(20);
            assertThat(s.shards()).containsExactly(0, 1, 2, 3);
            assertThat(set.shards()).allSatisfy(shard -> assertThat(shard.manager().openSequences()).isOne());
            assertThatThrownBy(() -> set.move(s, 1)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("nothing to move");
            assertThatThrownBy(() -> set.createSequenceOn(0, 20, List.of(), null, 0))
                    .isInstanceOf(IllegalStateException.class);
            s.close();
            assertThat(set.shards()).allSatisfy(shard -> assertThat(shard.manager().openSequences()).isZero());
        }
    }

    @Test
    void refusalsNameTheProblemAndChangeNothingOnAnyShard() {
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = ShardedKvCache.onHost(GEOMETRY, DType.FP16, 2, LIMIT, Placement.BY_KV_HEAD);
                KvCacheManager reference = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Workload w = workload("refusals", arena);
            Pair filled = w.filled(set, reference, 64, 4);
            Workload.Prompt p = w.prompt(50);
            ShardedSequence empty = set.createSequence(p.tokens(), p.spans(), ONE_BIT, 0);
            MemoryUsage before = set.usage();
            // a NaN in the second shard's head range (head 3): the first shard must not have stored its part
            MemorySegment nan = arena.allocate(p.keys()[0].byteSize(), 64).copyFrom(p.keys()[0]);
            Elements.write(nan, DType.FP16, (3L * p.tokens() + 7) * GEOMETRY.headDim() + 9, Float.NaN);
            assertThatThrownBy(() -> empty.fill(0, nan, p.values()[0], DType.FP16))
                    .isInstanceOf(NonFiniteInputException.class).hasMessageContaining("at head 3, token 7, channel 9");
            assertThatThrownBy(() -> empty.fill(0, p.keys()[0], p.values()[0], DType.BF16))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("BF16 but the cache stores FP16");
            assertThatThrownBy(() -> empty.fill(0, p.keys()[0].asSlice(2), p.values()[0], DType.FP16))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("keys are");
            assertThatThrownBy(() -> empty.fill(2, p.keys()[0], p.values()[0], DType.FP16))
                    .isInstanceOf(IndexOutOfBoundsException.class);
            assertThatThrownBy(() -> filled.sharded().fill(0, p.keys()[0], p.values()[0], DType.FP16))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("already filled");
            assertThat(empty.isFilled(0)).isFalse();
            assertThat(set.usage()).isEqualTo(before);

            // appends: a NaN in one item of a batch, an unfilled layer, a duplicate, another set's sequence
            MemorySegment keys = w.fp16(2, GEOMETRY.kvHeads());
            MemorySegment values = w.fp16(2, GEOMETRY.kvHeads());
            Elements.write(values, DType.FP16, (1L * GEOMETRY.kvHeads() + 3) * GEOMETRY.headDim() + 1,
                    Float.POSITIVE_INFINITY);
            Pair other = w.filled(set, reference, 30, 0);
            MemoryUsage withOther = set.usage();
            List<ShardedSequence> two = List.of(filled.sharded(), other.sharded());
            assertThatThrownBy(() -> set.append(0, two, keys, values, DType.FP16))
                    .isInstanceOf(NonFiniteInputException.class)
                    .hasMessageContaining("layer 0 of " + other.sharded() + " appended value")
                    .hasMessageContaining("head 3, token 30, channel 1");
            assertThatThrownBy(() -> set.append(0, List.of(filled.sharded(), empty), keys, keys, DType.FP16))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("not filled yet");
            assertThatThrownBy(() -> set.append(0, List.of(filled.sharded(), filled.sharded()), keys, keys,
                    DType.FP16)).isInstanceOf(IllegalArgumentException.class).hasMessageContaining("twice");
            assertThatThrownBy(() -> set.append(0, List.of(), keys, keys, DType.FP16))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("empty");
            assertThatThrownBy(() -> set.append(0, List.of(filled.sharded()), keys, keys, DType.FP16))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("appended key are");
            try (ShardedKvCache another = ShardedKvCache.onHost(GEOMETRY, DType.FP16, 1, LIMIT,
                    Placement.BY_SEQUENCE_MOST_FREE)) {
                ShardedSequence foreign = another.createSequence(10);
                assertThatThrownBy(() -> set.append(0, List.of(foreign), keys.asSlice(0, keys.byteSize() / 2),
                        keys.asSlice(0, keys.byteSize() / 2), DType.FP16))
                        .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("another sharded cache");
                foreign.close();
            }
            assertThat(filled.sharded().tokens(0)).isEqualTo(64);
            assertThat(other.sharded().tokens(0)).isEqualTo(30);
            assertThat(set.usage()).isEqualTo(withOther);

            // decodes: wrong query heads, sizes, a NaN query; the output stays untouched
            MemorySegment q = w.queries(2);
            MemorySegment out = w.output(2);
            Elements.write(q, DType.FP16, (1L * GEOMETRY.queryHeads() + 5) * GEOMETRY.headDim() + 2, Float.NaN);
            assertThatThrownBy(() -> set.decode(CALIBRATION, 0, two, q, DType.FP16, GEOMETRY.queryHeads(), out))
                    .isInstanceOf(NonFiniteInputException.class)
                    .hasMessageContaining("queries of sequence 1 of the batch: non-finite value NaN at head 5");
            assertThatThrownBy(() -> set.decode(CALIBRATION, 0, two, q, DType.FP16, 4, out))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("queryHeads 4: the model has 8");
            assertThatThrownBy(() -> set.decode(CALIBRATION, 0, two, q, DType.FP16, 8, out.asSlice(4)))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("outputs are");
            assertThatThrownBy(() -> set.decode(CALIBRATION, 1, List.of(empty), w.queries(1), DType.FP16, 8,
                    w.output(1))).isInstanceOf(IllegalStateException.class).hasMessageContaining("not filled yet");
            for (long i = 0; i < out.byteSize() / 4; i++) {
                assertThat(out.getAtIndex(Elements.FLOAT_LE, i)).isNaN();
            }
            // one shard checks its input itself: the same typed refusal, nothing stored
            try (ShardedKvCache whole = ShardedKvCache.onHost(GEOMETRY, DType.FP16, 2, LIMIT,
                    Placement.BY_SEQUENCE_ROUND_ROBIN)) {
                ShardedSequence s = whole.createSequence(p.tokens(), p.spans(), ONE_BIT, 0);
                assertThatThrownBy(() -> s.fill(0, nan, p.values()[0], DType.FP16))
                        .isInstanceOf(NonFiniteInputException.class)
                        .hasMessageContaining("at head 3, token 7, channel 9");
                assertThat(s.isFilled(0)).isFalse();
                assertThat(whole.usage()).isEqualTo(MemoryUsage.ZERO);
                s.close();
            }
            // a shard without room for its part of a fill: refused before any shard stored anything
            try (ShardedKvCache small = ShardedKvCache.onHost(GEOMETRY, DType.FP16, 2, 40_000,
                    Placement.BY_KV_HEAD)) {
                Workload.Prompt big = w.prompt(300);
                ShardedSequence s = small.createSequence(big.tokens(), big.spans(), ONE_BIT, 0);
                assertThatThrownBy(() -> s.fill(0, big.keys()[0], big.values()[0], DType.FP16))
                        .isInstanceOf(CacheMemoryLimitException.class).hasMessageContaining("on shard 'host-0'");
                assertThat(small.usage()).isEqualTo(MemoryUsage.ZERO);
                s.close();
            }
            empty.close();
            filled.sharded().close();
            other.sharded().close();
            filled.reference().close();
            other.reference().close();
        }
    }

    /** A host storage that fails every write while {@link #failing} is set: a device that fails mid-operation. */
    static final class FailingStorage extends HostDelegate {
        volatile boolean failing;

        FailingStorage() {
            super(new HostStorage());
        }

        @Override
        public String name() {
            return "failing host";
        }

        @Override
        public void write(MemorySegment source, StorageBlock target, RowCopy copy) {
            if (failing) {
                throw new IllegalStateException("injected write failure into " + target.label());
            }
            super.write(source, target, copy);
        }
    }

    /** Two host shards of {@code geometry}, the second over a {@link FailingStorage}. */
    private static ShardedKvCache withFailingSecondShard(Placement placement, FailingStorage storage) {
        ModelGeometry each = ShardedKvCache.shardGeometry(GEOMETRY, placement, 2);
        return ShardedKvCache.of(GEOMETRY, placement, List.of(HostCacheShard.onHost("good", each, DType.FP16, LIMIT),
                new HostCacheShard("flaky", new KvCacheManager(each, DType.FP16, storage, LIMIT))));
    }

    @Test
    void aShardFailingMidFillOrAppendIsUndoneOnTheOtherShards() {
        FailingStorage storage = new FailingStorage();
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = withFailingSecondShard(Placement.BY_KV_HEAD, storage);
                KvCacheManager reference = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Workload w = workload("undo-kv-head", arena);
            Pair a = w.filled(set, reference, 80, 2);
            Workload.Prompt p = w.prompt(60);
            ShardedSequence b = set.createSequence(p.tokens(), p.spans(), ONE_BIT, 2);
            Sequence bRef = reference.createSequence(p.tokens(), p.spans(), ONE_BIT, 2);
            MemoryUsage before = set.usage();
            List<MemoryUsage> perShard = set.shards().stream().map(CacheShard::usage).toList();
            storage.failing = true;
            assertThatThrownBy(() -> b.fill(0, p.keys()[0], p.values()[0], DType.FP16))
                    .isInstanceOf(ShardFailureException.class)
                    .hasMessageContaining("shard 'flaky' failed filling layer 0 of " + b)
                    .hasRootCauseMessage("injected write failure into layer 0 of sequence #2 (60-token prompt) "
                            + "full-precision keys")
                    .satisfies(e -> assertThat(((ShardFailureException) e).shard()).isEqualTo("flaky"));
            assertThat(b.isFilled(0)).isFalse();
            assertThat(set.shards().stream().map(CacheShard::usage).toList()).isEqualTo(perShard);

            LayerKvView aBefore = a.sharded().download(0, arena);
            List<ShardedSequence> batch = List.of(a.sharded());
            assertThatThrownBy(() -> set.append(0, batch, w.fp16(1, 4), w.fp16(1, 4), DType.FP16))
                    .isInstanceOf(ShardFailureException.class).hasMessageContaining("shard 'flaky' failed appending");
            assertThat(a.sharded().tokens(0)).isEqualTo(80);
            Workload.assertSameLayer(a.sharded().download(0, arena), aBefore, "layer 0 after the undone append");
            assertThat(set.usage()).isEqualTo(before);

            storage.failing = false; // both go through now, and everything decodes as the reference
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                b.fill(l, p.keys()[l], p.values()[l], DType.FP16);
                bRef.fill(l, p.keys()[l], p.values()[l], DType.FP16);
            }
            List<Pair> both = List.of(a, new Pair(b, bRef));
            w.append(set, reference, 0, both);
            assertDecodesAsReference(set, both, w);
            for (Pair pair : both) {
                pair.sharded().close();
                pair.reference().close();
            }
        }
    }

    @Test
    void aBatchAppendAcrossShardsIsUndoneWhereItSucceededWhenOneShardFails() {
        FailingStorage storage = new FailingStorage();
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = withFailingSecondShard(Placement.BY_SEQUENCE_ROUND_ROBIN, storage);
                KvCacheManager reference = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Workload w = workload("undo-by-sequence", arena);
            List<Pair> pairs = new ArrayList<>();
            for (int i = 0; i < 4; i++) {
                pairs.add(w.filled(set, reference, 50 + 10 * i, 4));
            }
            assertThat(pairs.stream().map(p -> p.sharded().shards().getFirst()).toList()).containsExactly(0, 1, 0, 1);
            MemoryUsage before = set.usage();
            storage.failing = true;
            assertThatThrownBy(() -> w.append(set, reference, 1, pairs)).isInstanceOf(ShardFailureException.class)
                    .hasMessageContaining("shard 'flaky' failed appending to layer 1 of the batch");
            for (int i = 0; i < pairs.size(); i++) {
                assertThat(pairs.get(i).sharded().tokens(1)).as("sequence %d", i).isEqualTo(50 + 10 * i);
            }
            assertThat(set.usage()).isEqualTo(before);
            storage.failing = false;
            w.append(set, reference, 1, pairs);
            assertDecodesAsReference(set, pairs, w);
            for (Pair p : pairs) {
                p.sharded().close();
                p.reference().close();
            }
        }
    }

    @ParameterizedTest
    @CsvSource({"BY_SEQUENCE_ROUND_ROBIN", "BY_KV_HEAD"})
    void aShardFailingInDecodeIsNamedAndTheOtherShardsSequencesStayUsable(Placement placement) {
        ModelGeometry each = ShardedKvCache.shardGeometry(GEOMETRY, placement, 2);
        FlakyShard flaky = new FlakyShard(HostCacheShard.onHost("flaky", each, DType.FP16, LIMIT));
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = ShardedKvCache.of(GEOMETRY, placement,
                        List.of(HostCacheShard.onHost("good", each, DType.FP16, LIMIT), flaky));
                KvCacheManager reference = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Workload w = workload("decode-failure-" + placement, arena);
            List<Pair> pairs = new ArrayList<>();
            for (int i = 0; i < 4; i++) {
                pairs.add(w.filled(set, reference, 40 + 7 * i, 0));
            }
            flaky.failing = true;
            MemorySegment out = w.output(pairs.size());
            assertThatThrownBy(() -> set.decode(CALIBRATION, 0, pairs.stream().map(Pair::sharded).toList(),
                    w.queries(pairs.size()), DType.FP16, GEOMETRY.queryHeads(), out))
                    .isInstanceOf(ShardFailureException.class)
                    .hasMessageContaining("shard 'flaky' failed decoding layer 0")
                    .hasRootCauseMessage("injected decode failure");
            for (long i = 0; i < out.byteSize() / 4; i++) {
                assertThat(out.getAtIndex(Elements.FLOAT_LE, i)).isNaN();
            }
            if (placement.bySequence()) { // the good shard's sequences decode, append and decode again meanwhile
                List<Pair> good = pairs.stream().filter(p -> p.sharded().shards().getFirst() == 0).toList();
                assertThat(good).hasSize(2);
                assertDecodesAsReference(set, good, w);
                w.append(set, reference, 0, good);
                assertDecodesAsReference(set, good, w);
            }
            flaky.failing = false;
            w.append(set, reference, 1, pairs);
            assertDecodesAsReference(set, pairs, w);
            for (Pair p : pairs) {
                p.sharded().close();
                p.reference().close();
            }
        }
    }

    @Test
    void everyShardDecodesOnItsOwnThreadAtTheSameTime() {
        ModelGeometry each = ShardedKvCache.shardGeometry(GEOMETRY, Placement.BY_KV_HEAD, 4);
        List<FlakyShard> shards = new ArrayList<>();
        CyclicBarrier meet = new CyclicBarrier(4);
        for (int i = 0; i < 4; i++) {
            FlakyShard s = new FlakyShard(HostCacheShard.onHost("s" + i, each, DType.FP16, LIMIT));
            s.meet = meet;
            shards.add(s);
        }
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = ShardedKvCache.of(GEOMETRY, Placement.BY_KV_HEAD, shards);
                KvCacheManager reference = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Workload w = workload("own-threads", arena);
            List<Pair> pairs = List.of(w.filled(set, reference, 50, 0), w.filled(set, reference, 33, 0));
            assertDecodesAsReference(set, pairs, w);
            assertThat(shards.stream().map(s -> s.decodedOn).toList())
                    .containsExactly("calibquant-shard-s0", "calibquant-shard-s1", "calibquant-shard-s2",
                            "calibquant-shard-s3");
            for (Pair p : pairs) {
                p.sharded().close();
                p.reference().close();
            }
        }
    }

    @Test
    void severalThreadsOnOneSetMatchTheReferenceStepByStep() throws Exception {
        int threads = 4;
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = ShardedKvCache.onHost(GEOMETRY, DType.FP16, 2, LIMIT, Placement.BY_KV_HEAD);
                ShardedKvCache bySequence = ShardedKvCache.onHost(GEOMETRY, DType.FP16, 3, LIMIT,
                        Placement.BY_SEQUENCE_MOST_FREE)) {
            long seed = Seeds.fresh("ShardedKvCacheTest.threads");
            ExecutorService pool = Executors.newFixedThreadPool(threads);
            try {
                List<Future<?>> done = new ArrayList<>();
                for (int t = 0; t < threads; t++) {
                    ShardedKvCache target = t % 2 == 0 ? set : bySequence;
                    Workload w = new Workload(new Random(seed + t), arena);
                    done.add(pool.submit(() -> {
                        try (KvCacheManager reference = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
                            List<Pair> pairs = new ArrayList<>();
                            for (int round = 0; round < 12; round++) {
                                if (pairs.size() < 3) {
                                    pairs.add(w.filled(target, reference, 30 + w.random.nextInt(60), 2));
                                }
                                int layer = w.random.nextInt(GEOMETRY.layers());
                                w.append(target, reference, layer, pairs);
                                MemorySegment q = w.queries(pairs.size());
                                assertThat(shardedDecode(target, pairs, layer, q, w))
                                        .isEqualTo(referenceDecode(pairs, layer, q, w));
                                if (round % 4 == 3) { // churn: close one, a new one comes next round
                                    Pair gone = pairs.remove(w.random.nextInt(pairs.size()));
                                    gone.sharded().close();
                                    gone.reference().close();
                                }
                            }
                            for (Pair p : pairs) {
                                p.sharded().close();
                                p.reference().close();
                            }
                        }
                        return null;
                    }));
                }
                for (Future<?> f : done) {
                    f.get(2, TimeUnit.MINUTES);
                }
            } finally {
                pool.shutdownNow();
            }
            assertThat(set.usage()).isEqualTo(MemoryUsage.ZERO);
            assertThat(bySequence.usage()).isEqualTo(MemoryUsage.ZERO);
            assertThat(set.openSequences() + bySequence.openSequences()).isZero();
        }
    }

    @Test
    void moveCopiesEveryLayerBitForBitAndChangesNothingWhenItFails() {
        FailingStorage storage = new FailingStorage();
        ModelGeometry each = GEOMETRY;
        try (Arena arena = Arena.ofShared();
                ShardedKvCache set = ShardedKvCache.of(GEOMETRY, Placement.BY_SEQUENCE_MOST_FREE, List.of(
                        HostCacheShard.onHost("a", each, DType.FP16, LIMIT),
                        HostCacheShard.onHost("b", each, DType.FP16, LIMIT),
                        new HostCacheShard("flaky", new KvCacheManager(each, DType.FP16, storage, LIMIT)),
                        HostCacheShard.onHost("small", each, DType.FP16, 1000)));
                KvCacheManager reference = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Workload w = workload("move", arena);
            Workload.Prompt prompt = w.prompt(90);
            ShardedSequence s = set.createSequenceOn(0, prompt.tokens(), prompt.spans(), ONE_BIT, 0).label("req-7");
            Sequence r = reference.createSequence(prompt.tokens(), prompt.spans(), ONE_BIT, 0);
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                s.fill(l, prompt.keys()[l], prompt.values()[l], DType.FP16);
                r.fill(l, prompt.keys()[l], prompt.values()[l], DType.FP16);
            }
            Pair pair = new Pair(s, r);
            for (int step = 0; step < 70; step++) { // grows the full-precision block once
                w.append(set, reference, step % 2, List.of(pair));
            }
            List<LayerKvView> before = new ArrayList<>();
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                before.add(s.download(l, arena));
            }
            MemoryUsage held = s.usage();
            MemorySegment q = w.queries(1);
            float[] decoded = shardedDecode(set, List.of(pair), 1, q, w);

            set.move(s, 1);
            assertThat(s.shards()).containsExactly(1);
            assertThat(set.shards().get(0).usage()).isEqualTo(MemoryUsage.ZERO);
            assertThat(set.shards().get(0).manager().openSequences()).isZero();
            assertThat(set.shards().get(1).usage()).isEqualTo(held);
            assertThat(s.usage()).isEqualTo(held);
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                Workload.assertSameLayer(s.download(l, arena), before.get(l), "moved layer " + l);
            }
            assertThat(shardedDecode(set, List.of(pair), 1, q, w)).isEqualTo(decoded);
            w.append(set, reference, 0, List.of(pair)); // and it goes on as if it had never moved
            assertDecodesAsReference(set, List.of(pair), w);
            set.move(s, 1); // where it is: nothing to do
            assertThat(s.shards()).containsExactly(1);

            assertThatThrownBy(() -> set.move(s, 3)).isInstanceOf(CacheMemoryLimitException.class)
                    .hasMessageContaining("moving sharded sequence 'req-7' from shard 'b' to shard 'small'");
            storage.failing = true;
            assertThatThrownBy(() -> set.move(s, 2)).isInstanceOf(ShardFailureException.class)
                    .hasMessageContaining("shard 'flaky' failed storing layer 0 while moving sharded sequence 'req-7'");
            assertThatThrownBy(() -> set.move(s, 4)).isInstanceOf(IndexOutOfBoundsException.class);
            assertThat(s.shards()).containsExactly(1);
            assertThat(set.shards().get(2).usage()).isEqualTo(MemoryUsage.ZERO);
            assertThat(set.shards().get(2).manager().openSequences()).isZero();
            assertThat(set.shards().get(3).usage()).isEqualTo(MemoryUsage.ZERO);
            assertDecodesAsReference(set, List.of(pair), w);
            s.close();
            r.close();
            assertThatThrownBy(() -> set.move(s, 0)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("is closed");
        }
    }

    @Test
    void aLayerDownloadedFromOneSetRestoresIntoAnotherOfOtherPlacement() {
        try (Arena arena = Arena.ofConfined(); // confined: the restores run on the caller's thread
                ShardedKvCache heads = ShardedKvCache.onHost(GEOMETRY, DType.FP16, 4, LIMIT, Placement.BY_KV_HEAD);
                ShardedKvCache sequences = ShardedKvCache.onHost(GEOMETRY, DType.FP16, 2, LIMIT,
                        Placement.BY_SEQUENCE_ROUND_ROBIN);
                KvCacheManager reference = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Workload w = workload("restore", arena);
            Pair a = w.filled(heads, reference, 70, 3);
            w.append(heads, reference, 0, List.of(a));
            ShardedSequence moved = sequences.createSequence(a.sharded().promptTokens(), a.sharded().visualSpans(),
                    ONE_BIT, 3);
            ShardedSequence back = heads.createSequence(a.sharded().promptTokens(), a.sharded().visualSpans(),
                    ONE_BIT, 3);
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                moved.restoreLayer(l, a.sharded().download(l, arena));
                back.restoreLayer(l, moved.download(l, arena));
            }
            assertThatThrownBy(() -> back.restoreLayer(0, moved.download(0, arena)))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("already filled");
            assertDecodesAsReference(sequences, List.of(new Pair(moved, a.reference())), w);
            assertDecodesAsReference(heads, List.of(new Pair(back, a.reference()), a), w);
            LayerKvView layer = a.reference().layer(1);
            ShardedSequence bad = heads.createSequence(a.sharded().promptTokens() + 1, a.sharded().visualSpans(),
                    ONE_BIT, 3);
            assertThatThrownBy(() -> bad.restoreLayer(1, layer)).isInstanceOf(InvalidShapeException.class)
                    .hasMessageContaining("the prompt alone has"); // each shard refused its part; none stored one
            assertThat(heads.shards()).allSatisfy(s -> assertThat(s.manager().openSequences()).isEqualTo(3));
            assertThat(bad.isFilled(1)).isFalse();
            for (ShardedSequence s : List.of(a.sharded(), moved, back, bad)) {
                s.close();
            }
            a.reference().close();
        }
    }

    @Test
    void closingTheSetFreesAndReportsOpenSequencesAndRefusesFurtherUse() {
        ShardedKvCache set = ShardedKvCache.onHost(GEOMETRY, DType.FP16, 2, LIMIT, Placement.BY_SEQUENCE_MOST_FREE);
        ShardedSequence s;
        try (Arena arena = Arena.ofShared(); KvCacheManager reference = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Workload w = workload("close", arena);
            Pair p = w.filled(set, reference, 40, 0);
            s = p.sharded().label("left-open");
            p.reference().close();
            assertThatThrownBy(set::close).isInstanceOf(CacheLeakException.class)
                    .hasMessageContaining("sharded sequence 'left-open'");
        }
        assertThat(s.isOpen()).isFalse();
        assertThat(s.usage()).isEqualTo(MemoryUsage.ZERO);
        assertThat(set.usage()).isEqualTo(MemoryUsage.ZERO);
        assertThatThrownBy(() -> set.createSequence(10)).isInstanceOf(IllegalStateException.class)
                .hasMessageContaining("sharded KV cache is closed");
        assertThatThrownBy(() -> s.tokens(0)).isInstanceOf(IllegalStateException.class);
        s.close(); // idempotent, as the set's close is
        set.close();
    }
}
