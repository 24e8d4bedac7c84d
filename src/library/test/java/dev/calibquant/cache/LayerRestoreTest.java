package dev.calibquant.cache;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.attention.CpuCalibQuantAttention;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.NonFiniteInputException;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.function.UnaryOperator;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

/**
 * {@link Sequence#restoreLayer} (a layer stored byte for byte from another cache), {@link Sequence#copyLayerFrom}
 * (the same, storage to storage), {@link Sequence#clearLayer},
 * {@link Sequence#truncate} and {@link Sequence#fillBytes}: what moving a sequence and undoing a write rest on.
 */
class LayerRestoreTest {

    @RegisterExtension
    final RandomSeedExtension seed = new RandomSeedExtension();

    static final ModelGeometry GEOMETRY = new ModelGeometry(2, 8, 2, 32);
    static final List<TokenSpan> SPANS = List.of(new TokenSpan(3, 40), new TokenSpan(45, 60));
    static final int PROMPT = 70;

    /** A layer view whose parts a test replaces. */
    record View(int kvHeads, int headDim, DType dtype, int fullTokens, int fullCapacity, MemorySegment fullKeys,
            MemorySegment fullValues, List<QuantizedSpan> visualSpans) implements LayerKvView {

        static View of(LayerKvView v) {
            return new View(v.kvHeads(), v.headDim(), v.dtype(), v.fullTokens(), v.fullCapacity(), v.fullKeys(),
                    v.fullValues(), v.visualSpans());
        }

        View withSpans(UnaryOperator<QuantizedSpan> change) {
            List<QuantizedSpan> changed = new ArrayList<>();
            for (QuantizedSpan q : visualSpans) {
                changed.add(change.apply(q));
            }
            return new View(kvHeads, headDim, dtype, fullTokens, fullCapacity, fullKeys, fullValues, changed);
        }
    }

    private static MemorySegment[] prompt(Arena arena, Random random, DType dtype) {
        return new MemorySegment[] {
            KvData.normal(arena, random, dtype, GEOMETRY.kvHeads(), PROMPT, GEOMETRY.headDim()),
            KvData.normal(arena, random, dtype, GEOMETRY.kvHeads(), PROMPT, GEOMETRY.headDim())};
    }

    private static MemorySegment step(Arena arena, Random random, DType dtype) {
        return KvData.normal(arena, random, dtype, GEOMETRY.kvHeads(), 1, GEOMETRY.headDim());
    }

    /** Every byte of both layers' blocks (full-precision up to the capacity, every span segment) is the same. */
    static void assertSameLayer(LayerKvView actual, LayerKvView expected) {
        assertThat(actual.fullTokens()).isEqualTo(expected.fullTokens());
        assertThat(actual.fullCapacity()).isEqualTo(expected.fullCapacity());
        assertThat(actual.fullKeys().mismatch(expected.fullKeys())).as("full keys").isEqualTo(-1);
        assertThat(actual.fullValues().mismatch(expected.fullValues())).as("full values").isEqualTo(-1);
        assertThat(actual.visualSpans()).hasSameSizeAs(expected.visualSpans());
        for (int i = 0; i < actual.visualSpans().size(); i++) {
            QuantizedSpan a = actual.visualSpans().get(i);
            QuantizedSpan e = expected.visualSpans().get(i);
            assertThat(a.tokens()).isEqualTo(e.tokens());
            assertThat(a.keyCodes().mismatch(e.keyCodes())).as("span %d key codes", i).isEqualTo(-1);
            assertThat(a.valueCodes().mismatch(e.valueCodes())).as("span %d value codes", i).isEqualTo(-1);
            assertThat(a.keyScale().mismatch(e.keyScale())).as("span %d key scales", i).isEqualTo(-1);
            assertThat(a.keyOffset().mismatch(e.keyOffset())).as("span %d key offsets", i).isEqualTo(-1);
            assertThat(a.valueScale().mismatch(e.valueScale())).as("span %d value scales", i).isEqualTo(-1);
            assertThat(a.valueOffset().mismatch(e.valueOffset())).as("span %d value offsets", i).isEqualTo(-1);
            assertThat(a.paramType()).isEqualTo(e.paramType());
            assertThat(a.wideKeys() == null).isEqualTo(e.wideKeys() == null);
            if (e.wideKeys() != null) {
                assertThat(a.wideKeys().mask().mismatch(e.wideKeys().mask())).as("span %d mask", i).isEqualTo(-1);
                assertThat(a.wideKeys().lowBits().mismatch(e.wideKeys().lowBits())).as("span %d low bits", i)
                        .isEqualTo(-1);
            }
        }
    }

    private static float[] decode(CpuCalibQuantAttention attention, Sequence s, int layer, MemorySegment queries,
            Arena arena) {
        MemorySegment out = arena.allocate(4L * GEOMETRY.queryHeads() * GEOMETRY.headDim());
        attention.decode(List.of(s.layer(layer)), queries, DType.FP16, GEOMETRY.queryHeads(), out);
        return out.toArray(Elements.FLOAT_LE);
    }

    @Test
    void aRestoredSequenceHoldsTheSameBytesAndDecodesIdentically() {
        Random random = seed.random();
        // 1-bit per channel (calibrated) with room reserved, and 2-bit per token in fp32 growing geometrically
        record Case(DType dtype, QuantConfig config, int reserved) {}
        // and 2-bit keys with 1-bit values (two code widths in one span)
        for (Case c : List.of(new Case(DType.FP16, QuantConfig.defaults(1), 8),
                new Case(DType.FP32, QuantConfig.defaults(2).withKeyGranularity(Granularity.PER_TOKEN)
                        .withValueGranularity(Granularity.PER_TOKEN), 0),
                new Case(DType.FP16, QuantConfig.defaults(2).withValueBits(1), 4),
                // and fp16 parameters with half the key channels of each head on 2 bits
                new Case(DType.FP16, QuantConfig.defaults(1).withParamType(DType.FP16)
                        .withWideKeyChannels(GEOMETRY.headDim() / 2), 2))) {
            try (Arena arena = Arena.ofConfined();
                    KvCacheManager source = KvCacheManager.onHost(GEOMETRY, c.dtype());
                    KvCacheManager target = KvCacheManager.onHost(GEOMETRY, c.dtype(), 1L << 20)) {
                Sequence from = source.createSequence(PROMPT, SPANS, c.config(), c.reserved());
                Sequence to = target.createSequence(PROMPT, SPANS, c.config(), c.reserved());
                for (int l = 0; l < GEOMETRY.layers(); l++) {
                    MemorySegment[] kv = prompt(arena, random, c.dtype());
                    from.fill(l, kv[0], kv[1], c.dtype());
                    for (int t = 0; t < 3 + l; t++) {
                        from.append(l, step(arena, random, c.dtype()), step(arena, random, c.dtype()), c.dtype());
                    }
                    to.restoreLayer(l, from.layer(l));
                    assertSameLayer(to.layer(l), from.layer(l));
                    assertThat(to.tokens(l)).isEqualTo(from.tokens(l));
                }
                assertThat(to.usage()).isEqualTo(from.usage());
                assertThat(target.usage()).isEqualTo(source.usage());

                CpuCalibQuantAttention attention = new CpuCalibQuantAttention(c.config().calibration());
                for (int l = 0; l < GEOMETRY.layers(); l++) {
                    MemorySegment key = step(arena, random, c.dtype());
                    MemorySegment value = step(arena, random, c.dtype());
                    from.append(l, key, value, c.dtype()); // both keep growing alike
                    to.append(l, key, value, c.dtype());
                    MemorySegment q = KvData.normal(arena, random, DType.FP16, GEOMETRY.queryHeads(), 1,
                            GEOMETRY.headDim());
                    assertThat(decode(attention, to, l, q, arena)).isEqualTo(decode(attention, from, l, q, arena));
                    assertSameLayer(to.layer(l), from.layer(l));
                }
                from.close();
                to.close();
            }
        }
    }

    @Test
    void aBadViewIsRefusedNamingTheProblemAndChangesNothing() {
        Random random = seed.random();
        QuantConfig oneBit = QuantConfig.defaults(1);
        try (Arena arena = Arena.ofConfined();
                KvCacheManager source = KvCacheManager.onHost(GEOMETRY, DType.FP16);
                KvCacheManager target = KvCacheManager.onHost(GEOMETRY, DType.FP16, 1L << 20)) {
            Sequence from = source.createSequence(PROMPT, SPANS, oneBit, 4);
            MemorySegment[] kv = prompt(arena, random, DType.FP16);
            from.fill(0, kv[0], kv[1], DType.FP16);
            from.append(0, step(arena, random, DType.FP16), step(arena, random, DType.FP16), DType.FP16);
            View good = View.of(from.layer(0));
            Sequence to = target.createSequence(PROMPT, SPANS, oneBit, 4);
            MemorySegment nanKeys = arena.allocate(good.fullKeys().byteSize()).copyFrom(good.fullKeys());
            Elements.write(nanKeys, DType.FP16, (long) 1 * good.fullCapacity() * GEOMETRY.headDim()
                    + (long) 2 * GEOMETRY.headDim() + 5, Float.NaN); // head 1, token 2, channel 5
            MemorySegment closed;
            try (Arena gone = Arena.ofConfined()) {
                closed = gone.allocate(good.fullValues().byteSize());
            }
            MemorySegment infScale = arena.allocate(good.visualSpans().getFirst().keyScale().byteSize())
                    .copyFrom(good.visualSpans().getFirst().keyScale());
            infScale.setAtIndex(Elements.FLOAT_LE, 7, Float.POSITIVE_INFINITY);

            record Bad(LayerKvView view, Class<? extends Throwable> type, String message) {}
            List<Bad> bad = List.of(
                    new Bad(new View(1, 32, DType.FP16, good.fullTokens(), good.fullCapacity(), good.fullKeys(),
                            good.fullValues(), good.visualSpans()), InvalidShapeException.class, "1 KV heads of dim 32"),
                    new Bad(new View(2, 32, DType.BF16, good.fullTokens(), good.fullCapacity(), good.fullKeys(),
                            good.fullValues(), good.visualSpans()), InvalidShapeException.class,
                            "BF16 but the cache stores FP16"),
                    new Bad(new View(2, 32, DType.FP16, 17, good.fullCapacity(), good.fullKeys(), good.fullValues(),
                            good.visualSpans()), InvalidShapeException.class, "the prompt alone has 18"),
                    new Bad(new View(2, 32, DType.FP16, good.fullTokens(), good.fullTokens() - 1, good.fullKeys(),
                            good.fullValues(), good.visualSpans()), InvalidShapeException.class, "in a capacity of"),
                    new Bad(new View(2, 32, DType.FP16, good.fullTokens(), good.fullCapacity() + 1, good.fullKeys(),
                            good.fullValues(), good.visualSpans()), InvalidShapeException.class,
                            "full-precision keys are"),
                    new Bad(new View(2, 32, DType.FP16, good.fullTokens(), good.fullCapacity(), good.fullKeys(),
                            good.fullValues(), good.visualSpans().subList(0, 1)), InvalidShapeException.class,
                            "1 quantized spans; the sequence has 2"),
                    new Bad(good.withSpans(q -> new QuantizedSpan(q.tokens(), q.kvHeads(), q.headDim(), 2,
                            q.keyGranularity(), q.valueGranularity(), q.keyCodes(), q.valueCodes(), q.keyScale(),
                            q.keyOffset(), q.valueScale(), q.valueOffset())), InvalidShapeException.class,
                            "2-bit PER_CHANNEL/PER_CHANNEL; the sequence quantizes 1-bit"),
                    new Bad(good.withSpans(q -> new QuantizedSpan(q.tokens(), q.kvHeads(), q.headDim(), q.bits(),
                            q.keyGranularity(), q.valueGranularity(), q.keyCodes(), q.valueCodes().asSlice(1),
                            q.keyScale(), q.keyOffset(), q.valueScale(), q.valueOffset())),
                            InvalidShapeException.class, "value codes are"),
                    new Bad(new View(2, 32, DType.FP16, good.fullTokens(), good.fullCapacity(), nanKeys,
                            good.fullValues(), good.visualSpans()), NonFiniteInputException.class,
                            "at head 1, token 2, channel 5"),
                    new Bad(good.withSpans(q -> q == good.visualSpans().getFirst() ? new QuantizedSpan(q.tokens(),
                            q.kvHeads(), q.headDim(), q.bits(), q.keyGranularity(), q.valueGranularity(), q.keyCodes(),
                            q.valueCodes(), infScale, q.keyOffset(), q.valueScale(), q.valueOffset()) : q),
                            NonFiniteInputException.class, "key scales: non-finite value Infinity"),
                    new Bad(new View(2, 32, DType.FP16, good.fullTokens(), good.fullCapacity(), good.fullKeys(),
                            closed, good.visualSpans()), IllegalArgumentException.class, "not readable host memory"));
            for (Bad b : bad) {
                assertThatThrownBy(() -> to.restoreLayer(0, b.view())).isInstanceOf(b.type())
                        .hasMessageContaining(b.message());
                assertThat(to.isFilled(0)).isFalse();
                assertThat(target.usage()).isEqualTo(MemoryUsage.ZERO);
                assertThat(target.storage().liveBlocks()).isZero();
            }
            assertThatThrownBy(() -> to.restoreLayer(2, good)).isInstanceOf(IndexOutOfBoundsException.class);
            to.restoreLayer(0, good); // the good one goes through afterwards
            assertThatThrownBy(() -> to.restoreLayer(0, good)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("already filled");
            Sequence other = target.createSequence(PROMPT - 1, List.of(new TokenSpan(3, 40), new TokenSpan(45, 59)),
                    oneBit);
            assertThatThrownBy(() -> other.restoreLayer(0, good)).isInstanceOf(InvalidShapeException.class)
                    .hasMessageContaining("the view's span is [2][15][32]; the sequence's is [2][14][32]");
            other.close();
            to.close();
            assertThatThrownBy(() -> to.restoreLayer(1, good)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("is closed");
            from.close();
        }
    }

    @Test
    void aLayerCopiedStorageToStorageHoldsTheSameBytesAndDecodesIdentically() {
        Random random = seed.random();
        QuantConfig config = QuantConfig.defaults(1);
        try (Arena arena = Arena.ofConfined();
                KvCacheManager source = KvCacheManager.onHost(GEOMETRY, DType.FP16);
                KvCacheManager target = KvCacheManager.onHost(GEOMETRY, DType.FP16, 1L << 20)) {
            assertThat(target.canCopyFrom(source)).isTrue();
            assertThat(target.canCopyFrom(target)).isFalse();
            Sequence from = source.createSequence(PROMPT, SPANS, config, 4);
            Sequence to = target.createSequence(PROMPT, SPANS, config, 4);
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                MemorySegment[] kv = prompt(arena, random, DType.FP16);
                from.fill(l, kv[0], kv[1], DType.FP16);
                for (int t = 0; t < 6 + l; t++) { // past the reservation: the block grew
                    from.append(l, step(arena, random, DType.FP16), step(arena, random, DType.FP16), DType.FP16);
                }
                to.copyLayerFrom(l, from);
                assertSameLayer(to.layer(l), from.layer(l));
                assertThat(to.tokens(l)).isEqualTo(from.tokens(l));
            }
            assertThat(to.usage()).isEqualTo(from.usage());
            CpuCalibQuantAttention attention = new CpuCalibQuantAttention(config.calibration());
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                MemorySegment key = step(arena, random, DType.FP16);
                MemorySegment value = step(arena, random, DType.FP16);
                from.append(l, key, value, DType.FP16);
                to.append(l, key, value, DType.FP16);
                MemorySegment q = KvData.normal(arena, random, DType.FP16, GEOMETRY.queryHeads(), 1,
                        GEOMETRY.headDim());
                assertThat(decode(attention, to, l, q, arena)).isEqualTo(decode(attention, from, l, q, arena));
            }
            from.close();
            to.close();
        }
    }

    @Test
    void aCopyBetweenUnlikeSequencesOrStoragesIsRefusedAndLeavesNothing() {
        Random random = seed.random();
        QuantConfig oneBit = QuantConfig.defaults(1);
        try (Arena arena = Arena.ofConfined();
                KvCacheManager source = KvCacheManager.onHost(GEOMETRY, DType.FP16);
                KvCacheManager target = KvCacheManager.onHost(GEOMETRY, DType.FP16);
                KvCacheManager fp32 = KvCacheManager.onHost(GEOMETRY, DType.FP32)) {
            Sequence from = source.createSequence(PROMPT, SPANS, oneBit);
            MemorySegment[] kv = prompt(arena, random, DType.FP16);
            from.fill(0, kv[0], kv[1], DType.FP16);
            long layerBytes = from.usage().totalBytes();
            for (Sequence unlike : List.of(target.createSequence(PROMPT, SPANS, QuantConfig.defaults(2)),
                    target.createSequence(PROMPT, List.of(new TokenSpan(3, 40)), oneBit),
                    target.createSequence(PROMPT + 1, SPANS, oneBit),
                    fp32.createSequence(PROMPT, SPANS, oneBit))) {
                assertThatThrownBy(() -> unlike.copyLayerFrom(0, from)).isInstanceOf(IllegalArgumentException.class)
                        .hasMessageContaining("copying layer 0 of " + from);
                assertThat(unlike.isFilled(0)).isFalse();
                unlike.close();
            }
            assertThat(target.usage()).isEqualTo(MemoryUsage.ZERO);
            assertThat(fp32.usage()).isEqualTo(MemoryUsage.ZERO);
            Sequence to = target.createSequence(PROMPT, SPANS, oneBit);
            assertThatThrownBy(() -> to.copyLayerFrom(1, from)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("not filled");
            assertThatThrownBy(() -> from.copyLayerFrom(0, from)).isInstanceOf(IllegalArgumentException.class);
            assertThatThrownBy(() -> to.copyLayerFrom(2, from)).isInstanceOf(IndexOutOfBoundsException.class);
            to.copyLayerFrom(0, from);
            assertThatThrownBy(() -> to.copyLayerFrom(0, from)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("already filled");
            to.close();
            assertThatThrownBy(() -> to.copyLayerFrom(1, from)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("closed");

            try (KvCacheManager small = KvCacheManager.onHost(GEOMETRY, DType.FP16, layerBytes - 1)) {
                Sequence tight = small.createSequence(PROMPT, SPANS, oneBit);
                assertThatThrownBy(() -> tight.copyLayerFrom(0, from))
                        .isInstanceOf(CacheMemoryLimitException.class).hasMessageContaining("copying layer 0");
                assertThat(small.usage()).isEqualTo(MemoryUsage.ZERO);
                tight.close();
            }
            // a storage that cannot copy from the host directly: refused before anything is allocated
            HostDelegate plain = new HostDelegate(new HostStorage());
            try (KvCacheManager other = new KvCacheManager(GEOMETRY, DType.FP16, plain, KvCacheManager.NO_LIMIT)) {
                assertThat(other.canCopyFrom(source)).isFalse();
                Sequence there = other.createSequence(PROMPT, SPANS, oneBit);
                assertThatThrownBy(() -> there.copyLayerFrom(0, from))
                        .isInstanceOf(UnsupportedOperationException.class).hasMessageContaining("download");
                assertThat(plain.liveBlocks()).isZero();
                there.close();
            }
            // a copy failing in the storage midway frees what it allocated
            HostStorage inner = new HostStorage();
            int[] copies = {0};
            HostDelegate failing = new HostDelegate(inner) {
                @Override
                public boolean canCopyFrom(KvStorage other) {
                    return inner.canCopyFrom(other);
                }

                @Override
                public void copyFrom(KvStorage other, StorageBlock source, StorageBlock target) {
                    if (++copies[0] == 3) { // the first span's keys, after the full-precision pair
                        throw new IllegalStateException("injected copy failure");
                    }
                    inner.copyFrom(other, source, target);
                }
            };
            try (KvCacheManager flaky = new KvCacheManager(GEOMETRY, DType.FP16, failing, KvCacheManager.NO_LIMIT)) {
                Sequence there = flaky.createSequence(PROMPT, SPANS, oneBit);
                assertThatThrownBy(() -> there.copyLayerFrom(0, from)).hasMessageContaining("injected");
                assertThat(there.isFilled(0)).isFalse();
                assertThat(flaky.usage()).isEqualTo(MemoryUsage.ZERO);
                assertThat(failing.liveBlocks()).isZero();
                there.copyLayerFrom(0, from); // and it goes through the next time
                assertSameLayer(there.layer(0), from.layer(0));
                there.close();
            }
            from.close();
        }
    }

    /**
     * A copy takes the two sequences' locks in one JVM-wide order, so two sequences copying from each other at once
     * cannot deadlock. Checked without relying on timing: while this thread holds the first sequence's lock, a copy
     * into the second waits for it holding nothing, so the second sequence stays free for another caller.
     */
    @Test
    void aCopyWaitingForTheFirstLockHoldsNoOther() throws Exception {
        Random random = seed.random();
        QuantConfig oneBit = QuantConfig.defaults(1);
        try (Arena arena = Arena.ofShared();
                KvCacheManager a = KvCacheManager.onHost(GEOMETRY, DType.FP16);
                KvCacheManager b = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            MemorySegment[] kv = prompt(arena, random, DType.FP16);
            Sequence first = a.createSequence(PROMPT, SPANS, oneBit); // made first: first in the order
            Sequence second = b.createSequence(PROMPT, SPANS, oneBit);
            first.fill(1, kv[0], kv[1], DType.FP16);
            java.util.concurrent.ExecutorService pool = java.util.concurrent.Executors.newFixedThreadPool(2);
            try {
                java.util.concurrent.Future<?> copy;
                java.util.concurrent.atomic.AtomicReference<Thread> copier =
                        new java.util.concurrent.atomic.AtomicReference<>();
                synchronized (first) {
                    copy = pool.submit(() -> {
                        copier.set(Thread.currentThread());
                        second.copyLayerFrom(1, first);
                    });
                    long deadline = System.nanoTime() + 10_000_000_000L;
                    while (copier.get() == null || copier.get().getState() != Thread.State.BLOCKED) {
                        assertThat(System.nanoTime()).as("the copy never waited for the lock").isLessThan(deadline);
                        Thread.onSpinWait();
                    }
                    // isOpen() takes the second sequence's lock: it would hang if the waiting copy held it
                    assertThat(pool.submit(second::isOpen).get(10, java.util.concurrent.TimeUnit.SECONDS)).isTrue();
                }
                copy.get(10, java.util.concurrent.TimeUnit.SECONDS);
            } finally {
                pool.shutdownNow();
            }
            assertSameLayer(second.layer(1), first.layer(1));
            first.close();
            second.close();
        }
    }

    @Test
    void hostStoragesCopyOnlyTheirOwnBlocksOfEqualSize() {
        try (HostStorage a = new HostStorage(); HostStorage b = new HostStorage()) {
            StorageBlock small = a.allocate(16, "small");
            StorageBlock big = b.allocate(32, "big");
            StorageBlock same = b.allocate(16, "same");
            small.segment().fill((byte) 7);
            assertThatThrownBy(() -> b.copyFrom(a, small, big)).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("sizes differ");
            assertThatThrownBy(() -> b.copyFrom(a, same, small)).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("does not belong");
            assertThat(big.segment().toArray(java.lang.foreign.ValueLayout.JAVA_BYTE)).containsOnly((byte) 0);
            b.copyFrom(a, small, same);
            assertThat(same.segment().toArray(java.lang.foreign.ValueLayout.JAVA_BYTE)).containsOnly((byte) 7);
            small.close();
            big.close();
            same.close();
        }
    }

    @Test
    void aRestoreOverTheLimitOrFailingInTheStorageLeavesNothing() {
        Random random = seed.random();
        QuantConfig oneBit = QuantConfig.defaults(1);
        try (Arena arena = Arena.ofConfined();
                KvCacheManager source = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Sequence from = source.createSequence(PROMPT, SPANS, oneBit);
            MemorySegment[] kv = prompt(arena, random, DType.FP16);
            from.fill(0, kv[0], kv[1], DType.FP16);
            long layerBytes = from.usage().totalBytes();
            try (KvCacheManager small = KvCacheManager.onHost(GEOMETRY, DType.FP16, layerBytes - 1)) {
                Sequence to = small.createSequence(PROMPT, SPANS, oneBit);
                assertThatThrownBy(() -> to.restoreLayer(0, from.layer(0)))
                        .isInstanceOf(CacheMemoryLimitException.class).hasMessageContaining("restoring layer 0");
                assertThat(small.usage()).isEqualTo(MemoryUsage.ZERO);
                to.close();
            }
            int[] writes = {0};
            HostDelegate failing = new HostDelegate(new HostStorage()) {
                @Override
                public void write(MemorySegment src, StorageBlock target, RowCopy copy) {
                    if (++writes[0] == 4) { // the first span's key offsets, after the full-precision rows
                        throw new IllegalStateException("injected write failure");
                    }
                    super.write(src, target, copy);
                }
            };
            try (KvCacheManager flaky = new KvCacheManager(GEOMETRY, DType.FP16, failing, KvCacheManager.NO_LIMIT)) {
                Sequence to = flaky.createSequence(PROMPT, SPANS, oneBit);
                assertThatThrownBy(() -> to.restoreLayer(0, from.layer(0))).hasMessageContaining("injected");
                assertThat(to.isFilled(0)).isFalse();
                assertThat(flaky.usage()).isEqualTo(MemoryUsage.ZERO);
                assertThat(failing.liveBlocks()).isZero();
                to.restoreLayer(0, from.layer(0)); // writes go through again
                assertSameLayer(to.layer(0), from.layer(0));
                to.close();
            }
            from.close();
        }
    }

    @Test
    void clearLayerFreesOneLayerWhichCanBeFilledAgain() {
        Random random = seed.random();
        try (Arena arena = Arena.ofConfined();
                KvCacheManager manager = KvCacheManager.onHost(GEOMETRY, DType.FP16, 1L << 20)) {
            Sequence s = manager.createSequence(PROMPT, SPANS, QuantConfig.defaults(1), 2);
            assertThat(s.fillBytes()).isPositive();
            MemorySegment[] kv0 = prompt(arena, random, DType.FP16);
            MemorySegment[] kv1 = prompt(arena, random, DType.FP16);
            s.fill(0, kv0[0], kv0[1], DType.FP16);
            MemoryUsage oneLayer = s.usage();
            assertThat(oneLayer.totalBytes()).isEqualTo(s.fillBytes());
            int blocks = manager.storage().liveBlocks();
            s.fill(1, kv1[0], kv1[1], DType.FP16);
            for (int t = 0; t < 5; t++) { // grows past the reservation
                s.append(1, step(arena, random, DType.FP16), step(arena, random, DType.FP16), DType.FP16);
            }
            s.clearLayer(1);
            assertThat(s.isFilled(1)).isFalse();
            assertThat(s.usage()).isEqualTo(oneLayer);
            assertThat(manager.usage()).isEqualTo(oneLayer);
            assertThat(manager.storage().liveBlocks()).isEqualTo(blocks);
            s.fill(1, kv1[0], kv1[1], DType.FP16);
            assertThat(s.usage()).isEqualTo(oneLayer.plus(oneLayer));
            assertThatThrownBy(() -> s.clearLayer(2)).isInstanceOf(IndexOutOfBoundsException.class);
            s.clearLayer(0);
            assertThatThrownBy(() -> s.clearLayer(0)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("not filled yet");
            s.close();
            assertThatThrownBy(() -> s.clearLayer(1)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("is closed");
            assertThat(manager.usage()).isEqualTo(MemoryUsage.ZERO);
        }
    }

    @Test
    void truncateDropsAppendedTokensAndZeroesTheirRows() {
        Random random = seed.random();
        try (Arena arena = Arena.ofConfined();
                KvCacheManager manager = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Sequence s = manager.createSequence(PROMPT, SPANS, QuantConfig.defaults(1), 4);
            Sequence once = manager.createSequence(PROMPT, SPANS, QuantConfig.defaults(1), 4);
            MemorySegment[] kv = prompt(arena, random, DType.FP16);
            s.fill(0, kv[0], kv[1], DType.FP16);
            once.fill(0, kv[0], kv[1], DType.FP16);
            MemorySegment key = step(arena, random, DType.FP16);
            MemorySegment value = step(arena, random, DType.FP16);
            s.append(0, key, value, DType.FP16);
            once.append(0, key, value, DType.FP16);
            for (int t = 0; t < 3; t++) {
                s.append(0, step(arena, random, DType.FP16), step(arena, random, DType.FP16), DType.FP16);
            }
            assertThatThrownBy(() -> s.truncate(0, PROMPT - 1)).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("it holds 74, of which 70 are the prompt's");
            assertThatThrownBy(() -> s.truncate(0, PROMPT + 5)).isInstanceOf(IllegalArgumentException.class);
            assertThatThrownBy(() -> s.truncate(1, PROMPT)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("not filled yet");
            assertThat(s.tokens(0)).isEqualTo(PROMPT + 4);
            s.truncate(0, PROMPT + 1);
            assertThat(s.tokens(0)).isEqualTo(PROMPT + 1);
            assertSameLayer(s.layer(0), once.layer(0)); // dropped rows zeroed: the same bytes as one append
            assertThat(s.usage()).isEqualTo(once.usage());
            s.truncate(0, PROMPT + 1); // a no-op
            s.truncate(0, PROMPT);
            assertThat(s.tokens(0)).isEqualTo(PROMPT);
            s.close();
            once.close();
            assertThat(manager.usage()).isEqualTo(MemoryUsage.ZERO);
        }
    }
}
