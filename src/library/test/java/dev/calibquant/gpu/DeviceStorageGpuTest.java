package dev.calibquant.gpu;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.cache.BlockPair;
import dev.calibquant.cache.CacheLeakException;
import dev.calibquant.cache.CacheMemoryLimitException;
import dev.calibquant.cache.HostStorage;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.MemoryUsage;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.RowCopy;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.StorageBlock;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.TestTensors;
import dev.calibquant.testing.GpuFixture;
import dev.calibquant.testing.GpuTest;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * The cache manager over device memory against the same manager over host memory, fed the same fresh random input
 * (never zero): every byte read back must be equal (zero-filled capacity included), and so must the memory counts.
 * Refusals (the manager's limit, the storage's planes) change nothing and leave nothing allocated; closing reports
 * what was left open.
 */
@GpuTest
class DeviceStorageGpuTest {
    private static final ModelGeometry GEOMETRY = new ModelGeometry(2, 8, 2, 128);
    private static final long LIMIT = 64L << 20;

    @RegisterExtension
    final GpuFixture gpu = new GpuFixture();

    /** Both managers' sequences, fed alike. */
    private record Twins(Sequence device, Sequence host) {
        void fill(Arena arena, Random random, DType dtype, int layer, int tokens) {
            MemorySegment k = TestTensors.write(arena, dtype, TestTensors.normal(random, 2, tokens, 128, 4));
            MemorySegment v = TestTensors.write(arena, dtype, TestTensors.normal(random, 2, tokens, 128, 0));
            device.fill(layer, k, v, dtype);
            host.fill(layer, k, v, dtype);
        }

        void append(Arena arena, Random random, DType dtype, int layer) {
            MemorySegment k = TestTensors.write(arena, dtype, TestTensors.normal(random, 2, 1, 128, 4));
            MemorySegment v = TestTensors.write(arena, dtype, TestTensors.normal(random, 2, 1, 128, 0));
            device.append(layer, k, v, dtype);
            host.append(layer, k, v, dtype);
        }
    }

    @ParameterizedTest
    @EnumSource(DType.class)
    void aDeviceStoredManagerHoldsExactlyWhatAHostStoredOneHolds(DType dtype) {
        DeviceStorage storage = DeviceStorage.forLimit(gpu.context(), LIMIT);
        try (Arena arena = Arena.ofConfined();
                KvCacheManager device = new KvCacheManager(GEOMETRY, dtype, storage, LIMIT);
                KvCacheManager host = KvCacheManager.onHost(GEOMETRY, dtype, LIMIT)) {
            // 330 prompt tokens, 262 visual: 68 full-precision rows, capacity 128, grown at the 61st append
            List<TokenSpan> spans = List.of(new TokenSpan(41, 296), new TokenSpan(300, 307));
            List<Twins> twins = List.of(
                    new Twins(device.createSequence(330, spans, QuantConfig.defaults(1)),
                            host.createSequence(330, spans, QuantConfig.defaults(1))),
                    new Twins(device.createSequence(330, spans, QuantConfig.defaults(2)),
                            host.createSequence(330, spans, QuantConfig.defaults(2))),
                    new Twins(device.createSequence(50), host.createSequence(50)));
            for (Twins t : twins) {
                for (int l = 0; l < GEOMETRY.layers(); l++) {
                    t.fill(arena, gpu.random(), dtype, l, t.host().promptTokens());
                }
            }
            LayerKvView beforeGrowth = twins.getFirst().device().layer(0);
            for (int step = 0; step < 70; step++) {
                for (Twins t : twins) {
                    for (int l = 0; l < GEOMETRY.layers(); l++) {
                        t.append(arena, gpu.random(), dtype, l);
                    }
                }
            }
            for (Twins t : twins) {
                for (int l = 0; l < GEOMETRY.layers(); l++) {
                    LayerKvView got = storage.download(t.device(), l, arena);
                    assertThat(t.device().tokens(l)).isEqualTo(t.host().tokens(l));
                    ManagedTablesTest.assertSameLayer(got, t.host().layer(l));
                }
            }
            assertThat(twins.getFirst().device().layer(0).fullCapacity()).isGreaterThan(128); // it grew
            assertThatThrownBy(() -> storage.download(beforeGrowth, arena)).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("freed since the view was taken");
            assertThat(device.usage()).isEqualTo(host.usage());
            assertThat(storage.liveBytes()).isEqualTo(device.usage().totalBytes());
            assertThat(storage.liveBlocks()).isEqualTo(2 * (2 * 3 + 2 * 3 + 2));
            twins.forEach(t -> {
                t.device().close();
                t.host().close();
            });
            assertThat(storage.liveBlocks()).isZero();
            assertThat(storage.usedPlaneBytes()).isZero();
        }
    }

    @Test
    void theManagersLimitRefusesBeforeTheDeviceIsTouched() {
        long limit = 100_000; // one layer of 100 full-precision tokens takes 2·2·128·128·2 = 131,072 bytes
        DeviceStorage storage = DeviceStorage.forLimit(gpu.context(), limit);
        try (Arena arena = Arena.ofConfined(); KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, storage,
                limit)) {
            Sequence s = cache.createSequence(100);
            MemorySegment k = TestTensors.write(arena, DType.FP16, TestTensors.normal(gpu.random(), 2, 100, 128, 4));
            assertThatThrownBy(() -> s.fill(0, k, k, DType.FP16)).isInstanceOf(CacheMemoryLimitException.class);
            assertThat(cache.usage()).isEqualTo(MemoryUsage.ZERO);
            assertThat(storage.liveBlocks()).isZero();
            assertThat(s.isFilled(0)).isFalse();
            s.close();
        }
    }

    @Test
    void aFullDeviceStorageRefusesWithATypedErrorAndChangesNothing() {
        // planes of 100,000 bytes: a layer of 100 tokens (capacity 128) puts 65,536 bytes in each; a second does not fit
        DeviceStorage storage = new DeviceStorage(gpu.context(), 100_000);
        try (Arena arena = Arena.ofConfined(); KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, storage,
                KvCacheManager.NO_LIMIT)) {
            Sequence s = cache.createSequence(100);
            MemorySegment k = TestTensors.write(arena, DType.FP16, TestTensors.normal(gpu.random(), 2, 100, 128, 4));
            MemorySegment v = TestTensors.write(arena, DType.FP16, TestTensors.normal(gpu.random(), 2, 100, 128, 0));
            s.fill(0, k, v, DType.FP16);
            MemoryUsage filled = cache.usage();
            long deviceBytes = gpu.context().liveDeviceBytes();
            assertThatThrownBy(() -> s.fill(1, k, v, DType.FP16)).isInstanceOf(DeviceOutOfMemoryError.class)
                    .isInstanceOf(OutOfMemoryError.class).hasMessageContaining("layer 1 of " + s)
                    .hasMessageContaining("largest free range");
            assertThat(cache.usage()).isEqualTo(filled);
            assertThat(storage.liveBlocks()).isEqualTo(2);
            assertThat(storage.usedPlaneBytes()).isEqualTo(65_536);
            assertThat(gpu.context().liveDeviceBytes()).isEqualTo(deviceBytes);
            assertThat(s.isFilled(1)).isFalse();
            ManagedTablesTest.assertSameLayer(storage.download(s, 0, arena), hostCopy(arena, k, v, 0));
            s.close();
            assertThat(storage.usedPlaneBytes()).isZero();
        }
    }

    /** A host manager's layer holding {@code k}, {@code v} (100 full-precision tokens). */
    private static LayerKvView hostCopy(Arena arena, MemorySegment k, MemorySegment v, int layer) {
        KvCacheManager host = KvCacheManager.onHost(GEOMETRY, DType.FP16);
        Sequence s = host.createSequence(100);
        s.fill(layer, k, v, DType.FP16);
        LayerKvView view = s.layer(layer);
        LayerKvView copy = new DownloadedLayer(view.kvHeads(), view.headDim(), view.dtype(), view.fullTokens(),
                view.fullCapacity(), arena.allocate(view.fullKeys().byteSize()).copyFrom(view.fullKeys()),
                arena.allocate(view.fullValues().byteSize()).copyFrom(view.fullValues()), List.of());
        s.close();
        host.close();
        return copy;
    }

    @Test
    void closingReportsWhatWasLeftOpenAndFreesIt() {
        long before = gpu.context().liveDeviceBytes();
        DeviceStorage storage = new DeviceStorage(gpu.context(), 1 << 20);
        KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, storage, KvCacheManager.NO_LIMIT);
        Sequence s = cache.createSequence(10);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment k = TestTensors.write(arena, DType.FP16, TestTensors.normal(gpu.random(), 2, 10, 128, 4));
            s.fill(0, k, k, DType.FP16);
        }
        assertThatThrownBy(cache::close).isInstanceOf(CacheLeakException.class)
                .hasMessageContaining(s.toString());
        assertThat(gpu.context().liveDeviceBytes()).isEqualTo(before);

        DeviceStorage direct = new DeviceStorage(gpu.context(), 1 << 16);
        StorageBlock forgotten = direct.allocate(100, "forgotten block");
        assertThatThrownBy(direct::close).isInstanceOf(IllegalStateException.class)
                .hasMessageContaining("1 blocks").hasMessageContaining("forgotten block (100 bytes)");
        assertThat(forgotten.isOpen()).isFalse();
        assertThat(gpu.context().liveDeviceBytes()).isEqualTo(before);
        direct.close(); // idempotent
        assertThatThrownBy(() -> direct.allocate(8, "late")).isInstanceOf(IllegalStateException.class)
                .hasMessageContaining("closed");
    }

    @Test
    void badCopiesAndForeignOrStaleSegmentsAreRefusedBeforeTheDriverSeesThem() {
        try (Arena arena = Arena.ofConfined(); DeviceStorage storage = new DeviceStorage(gpu.context(), 1 << 20);
                DeviceStorage other = new DeviceStorage(gpu.context(), 1 << 16); HostStorage host = new HostStorage()) {
            StorageBlock a = storage.allocate(256, "a");
            BlockPair pair = storage.allocatePair(128, 96, "pair");
            MemorySegment source = arena.allocate(256);
            for (int i = 0; i < 256; i++) {
                source.set(ValueLayout.JAVA_BYTE, i, (byte) (1 + gpu.random().nextInt(255)));
            }
            storage.write(source, a, new RowCopy(0, 64, 0, 64, 64, 4));
            storage.copy(a, pair.keys(), new RowCopy(0, 64, 0, 32, 32, 4)); // the first half of each row
            storage.copy(a, pair.values(), RowCopy.contiguous(160, 0, 96));

            assertThatThrownBy(() -> storage.write(source, a, new RowCopy(0, 16, 200, 64, 16, 2)))
                    .isInstanceOf(IndexOutOfBoundsException.class).hasMessageContaining("target of 256 bytes");
            assertThatThrownBy(() -> storage.write(source.asSlice(0, 100), a, RowCopy.contiguous(0, 0, 128)))
                    .isInstanceOf(IndexOutOfBoundsException.class).hasMessageContaining("source of 100 bytes");
            assertThatThrownBy(() -> storage.copy(a, pair.values(), RowCopy.contiguous(0, 0, 128)))
                    .isInstanceOf(IndexOutOfBoundsException.class);
            assertThatThrownBy(() -> storage.copy(a, a, RowCopy.contiguous(0, 128, 64)))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("within one block");
            StorageBlock foreign = other.allocate(64, "other's");
            StorageBlock hosted = host.allocate(64, "host's");
            assertThatThrownBy(() -> storage.copy(foreign, a, RowCopy.contiguous(0, 0, 64)))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("does not belong");
            assertThatThrownBy(() -> storage.write(source, hosted, RowCopy.contiguous(0, 0, 64)))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("does not belong");
            assertThatThrownBy(() -> storage.download(List.of(hosted.segment()), arena))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("not in a live block");
            assertThatThrownBy(() -> a.segment().get(ValueLayout.JAVA_BYTE, 0))
                    .isInstanceOf(IllegalStateException.class);

            MemorySegment[] back = storage.download(List.of(a.segment(), pair.keys().segment(),
                    pair.values().segment()), arena);
            assertThat(back[0].mismatch(source)).isEqualTo(-1); // the refused copies changed nothing
            for (int r = 0; r < 4; r++) {
                assertThat(back[1].asSlice(32L * r, 32).mismatch(source.asSlice(64L * r, 32))).isEqualTo(-1);
            }
            assertThat(back[2].mismatch(source.asSlice(160, 96))).isEqualTo(-1);

            MemorySegment stale = a.segment();
            a.close();
            assertThatThrownBy(() -> storage.write(source, a, RowCopy.contiguous(0, 0, 8)))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("closed");
            assertThatThrownBy(() -> storage.download(List.of(stale), arena))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("freed since");
            StorageBlock reused = storage.allocate(256, "reused"); // a's range again, zero-filled
            assertThat(storage.download(List.of(reused.segment()), arena)[0].mismatch(arena.allocate(256)))
                    .isEqualTo(-1);
            reused.close();
            pair.keys().close();
            pair.values().close();
            foreign.close();
            hosted.close();
        }
    }

    @Test
    void aReusedRangeIsZeroFilledAndThePlanesAreAllTheStorageHolds() {
        long before = gpu.context().liveDeviceBytes();
        long bytes = (5L << 19) + 64; // 2.5 MiB and a little: not a multiple of any power-of-two chunk
        try (Arena arena = Arena.ofConfined(); DeviceStorage storage = new DeviceStorage(gpu.context(), bytes + 1)) {
            assertThat(storage.planeBytes()).isEqualTo(bytes + 64); // rounded up to 64
            assertThat(storage.deviceBytes()).isEqualTo(2 * storage.planeBytes())
                    .isEqualTo(gpu.context().liveDeviceBytes() - before);
            byte[] noise = new byte[(int) bytes];
            gpu.random().nextBytes(noise);
            for (int i = 0; i < noise.length; i++) {
                noise[i] = noise[i] == 0 ? 1 : noise[i];
            }
            MemorySegment dirty = arena.allocate(bytes).copyFrom(MemorySegment.ofArray(noise));
            MemorySegment zeros = arena.allocate(bytes);

            BlockPair first = storage.allocatePair(bytes, bytes, "first");
            long at = first.keys().segment().address();
            storage.write(dirty, first.keys(), RowCopy.contiguous(0, 0, bytes));
            storage.write(dirty, first.values(), RowCopy.contiguous(0, 0, bytes));
            first.keys().close();
            first.values().close();
            BlockPair again = storage.allocatePair(bytes, bytes - 100, "again");
            assertThat(again.keys().segment().address()).isEqualTo(at); // the same range of both planes
            MemorySegment[] back = storage.download(List.of(again.keys().segment(), again.values().segment()), arena);
            assertThat(back[0].mismatch(zeros)).isEqualTo(-1);
            assertThat(back[1].mismatch(zeros.asSlice(0, bytes - 100))).isEqualTo(-1);

            storage.write(dirty, again.keys(), RowCopy.contiguous(0, 0, bytes));
            again.keys().close();
            again.values().close();
            StorageBlock single = storage.allocate(bytes, "single");
            assertThat(single.segment().address()).isEqualTo(at);
            assertThat(storage.download(List.of(single.segment()), arena)[0].mismatch(zeros)).isEqualTo(-1);
            single.close();
        }
        assertThat(gpu.context().liveDeviceBytes()).isEqualTo(before);
    }

    @Test
    void sequencesFilledFromSeveralThreadsAtOnceHoldTheirOwnData() throws Exception {
        DeviceStorage storage = DeviceStorage.forLimit(gpu.context(), LIMIT);
        ExecutorService pool = Executors.newFixedThreadPool(4);
        try (Arena arena = Arena.ofShared();
                KvCacheManager device = new KvCacheManager(GEOMETRY, DType.FP16, storage, LIMIT);
                KvCacheManager host = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            List<TokenSpan> spans = List.of(new TokenSpan(10, 90));
            List<Twins> twins = new ArrayList<>();
            List<Long> seeds = new ArrayList<>();
            for (int i = 0; i < 8; i++) {
                twins.add(new Twins(device.createSequence(100, spans, QuantConfig.defaults(1)),
                        host.createSequence(100, spans, QuantConfig.defaults(1))));
                seeds.add(gpu.random().nextLong());
            }
            List<Future<?>> done = new ArrayList<>();
            for (int i = 0; i < twins.size(); i++) {
                Twins t = twins.get(i);
                Random own = new Random(seeds.get(i));
                done.add(pool.submit(() -> {
                    for (int l = 0; l < GEOMETRY.layers(); l++) {
                        t.fill(arena, own, DType.FP16, l, 100);
                    }
                    for (int step = 0; step < 60; step++) {
                        for (int l = 0; l < GEOMETRY.layers(); l++) {
                            t.append(arena, own, DType.FP16, l);
                        }
                    }
                    return null;
                }));
            }
            for (Future<?> f : done) {
                f.get();
            }
            for (Twins t : twins) {
                for (int l = 0; l < GEOMETRY.layers(); l++) {
                    ManagedTablesTest.assertSameLayer(storage.download(t.device(), l, arena), t.host().layer(l));
                }
                t.device().close();
                t.host().close();
            }
            assertThat(storage.liveBlocks()).isZero();
        } finally {
            pool.shutdownNow();
        }
    }
}
