package dev.calibquant.gpu;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.attention.ReferenceAttention;
import dev.calibquant.cache.CacheLeakException;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.cuda.Cuda;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.CudaException;
import dev.calibquant.cuda.FaultInjection;
import dev.calibquant.cuda.ResourceLeakException;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.testing.Fp16Data;
import dev.calibquant.testing.GpuFixture;
import dev.calibquant.testing.GpuTest;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Driver failures in the middle of a fill, an append and a decode step, injected where the driver would report them
 * ({@link FaultInjection}), and a context closed under an open cache. After each: the call threw a typed error naming
 * the driver call, the manager's accounting and the storage's used bytes are as before it, nothing the cache holds
 * changed (its layers decode, on the CPU from a download, bit for bit as before), the output was not written, and
 * the cache goes on working: the retried call succeeds and the GPU result matches the CPU reference within its
 * bound. The fixture then finds no device resource left open.
 */
@GpuTest
class DeviceFaultsGpuTest {
    private static final ModelGeometry G = new ModelGeometry(1, 16, 4, 128);
    private static final long LIMIT = 64L << 20;
    private static final float POISON = Float.intBitsToFloat(0x7fc0dead);

    @RegisterExtension
    final GpuFixture gpu = new GpuFixture();

    /**
     * An allocation of the first fill of a fresh cache fails (its staging buffers: device uploads and tables, pinned
     * tables): device out of memory mid-fill.
     */
    @ParameterizedTest
    @ValueSource(strings = {"cuMemAlloc:1", "cuMemAlloc:2", "cuMemAlloc:3", "cuMemHostAlloc:1"})
    void outOfMemoryMidFillLeavesNothingAndTheFillCanBeRetried(String fault) {
        String call = fault.split(":")[0];
        int nth = Integer.parseInt(fault.split(":")[1]);
        Random random = gpu.random();
        try (Arena arena = Arena.ofConfined(); DeviceKvCache device = DeviceKvCache.open(gpu.context(), G, LIMIT)) {
            KvCacheManager cache = device.manager();
            Sequence first = cache.createSequence(900, List.of(new TokenSpan(30, 830)), QuantConfig.defaults(1));
            MemorySegment k = Fp16Data.fp16(arena, Fp16Data.normal(random, 4, 900, 128, 4));
            MemorySegment v = Fp16Data.fp16(arena, Fp16Data.normal(random, 4, 900, 128, 0));
            State before = State.of(device);
            try (FaultInjection f = FaultInjection.failNth(call, nth, FaultInjection.OUT_OF_MEMORY)) {
                assertThatThrownBy(() -> first.fill(0, k, v, DType.FP16)).isInstanceOf(CudaException.class)
                        .hasMessageContaining("[injected]");
                assertThat(f.fired()).as("the first fill makes at least %d %s calls", nth, call).isEqualTo(1);
            }
            assertThat(State.of(device)).isEqualTo(before);
            assertThat(first.isFilled(0)).isFalse();
            first.fill(0, k, v, DType.FP16);
            List<Sequence> batch = List.of(first, filled(arena, cache, random, 200));
            assertDecodesLikeTheCpu(arena, device, batch, random);
            batch.forEach(Sequence::close);
        }
    }

    /** A failing upload, a failing launch and a failing wait in a batch append. */
    @ParameterizedTest
    @ValueSource(strings = {"cuMemcpyHtoDAsync", "cuLaunchKernel", "cuStreamSynchronize"})
    void aFailedAppendAppendsNothingAndTheNextOneWorks(String call) {
        Random random = gpu.random();
        try (Arena arena = Arena.ofConfined(); DeviceKvCache device = DeviceKvCache.open(gpu.context(), G, LIMIT)) {
            KvCacheManager cache = device.manager();
            List<Sequence> batch = List.of(filled(arena, cache, random, 300), filled(arena, cache, random, 500));
            MemorySegment k = Fp16Data.fp16(arena, Fp16Data.normal(random, 2, 4, 128, 4));
            MemorySegment v = Fp16Data.fp16(arena, Fp16Data.normal(random, 2, 4, 128, 0));
            cache.append(0, batch, k, v, DType.FP16); // warms the append's staging
            State before = State.of(device);
            List<MemorySegment> held = cpuDecodes(arena, device, batch, 0);
            try (FaultInjection f = FaultInjection.failNth(call, 1, FaultInjection.INVALID_VALUE)) {
                assertThatThrownBy(() -> cache.append(0, batch, k, v, DType.FP16)).isInstanceOf(CudaException.class)
                        .hasMessageContaining(call);
                assertThat(f.fired()).isEqualTo(1);
            }
            assertThat(State.of(device)).isEqualTo(before);
            // (a wait that fails after the upload and launch ran leaves rows past the end, which no one reads)
            assertThat(batch.get(0).tokens(0)).isEqualTo(301);
            assertSameBits(cpuDecodes(arena, device, batch, 0), held, call);
            cache.append(0, batch, k, v, DType.FP16);
            assertDecodesLikeTheCpu(arena, device, batch, random);
            batch.forEach(Sequence::close);
        }
    }

    /** A failing upload, launch, download or wait in a decode step: the output is not written; the next step works. */
    @ParameterizedTest
    @ValueSource(strings = {"cuMemcpyHtoDAsync", "cuLaunchKernel", "cuMemcpyDtoHAsync", "cuStreamSynchronize"})
    void aFailedDecodeStepWritesNoOutputAndTheNextOneWorks(String call) {
        Random random = gpu.random();
        try (Arena arena = Arena.ofConfined(); DeviceKvCache device = DeviceKvCache.open(gpu.context(), G, LIMIT)) {
            KvCacheManager cache = device.manager();
            List<Sequence> batch = List.of(filled(arena, cache, random, 700), filled(arena, cache, random, 400));
            DeviceDecodeAttention attention = device.attention(QuantConfig.defaults(1).calibration());
            MemorySegment q = Fp16Data.fp16(arena, Fp16Data.normal(random, 2, 16, 128, 0));
            MemorySegment out = arena.allocate(4L * 2 * 16 * 128);
            attention.decode(0, batch, q, DType.FP16, 16, out); // warms the step's staging
            State before = State.of(device);
            for (long i = 0; i < out.byteSize() / 4; i++) {
                out.setAtIndex(ValueLayout.JAVA_FLOAT, i, POISON);
            }
            MemorySegment poisoned = arena.allocate(out.byteSize()).copyFrom(out);
            try (FaultInjection f = FaultInjection.failNth(call, 1, FaultInjection.LAUNCH_FAILED)) {
                assertThatThrownBy(() -> attention.decode(0, batch, q, DType.FP16, 16, out))
                        .isInstanceOf(CudaException.class).hasMessageContaining(call);
                assertThat(f.fired()).isEqualTo(1);
            }
            assertThat(out.mismatch(poisoned)).as("output written by a failed step").isEqualTo(-1);
            assertThat(State.of(device)).isEqualTo(before);
            assertDecodesLikeTheCpu(arena, device, batch, random);
            batch.forEach(Sequence::close);
        }
    }

    /**
     * A context closed under an open cache frees everything the cache held and reports it; every later call on the
     * cache fails with a typed error naming what is closed (no crash, no use of freed device memory), and closing the
     * cache then reports the sequences left open.
     */
    @Test
    void aContextClosedUnderTheCacheFailsLaterCallsCleanly() {
        Random random = gpu.random();
        CudaContext own = Cuda.device(0).openContext(); // the fixture's context keeps the primary context alive
        try (Arena arena = Arena.ofConfined()) {
            DeviceKvCache device = DeviceKvCache.open(own, G, LIMIT);
            KvCacheManager cache = device.manager();
            List<Sequence> batch = List.of(filled(arena, cache, random, 300));
            DeviceDecodeAttention attention = device.attention(QuantConfig.defaults(1).calibration());
            MemorySegment q = Fp16Data.fp16(arena, Fp16Data.normal(random, 1, 16, 128, 0));
            MemorySegment out = arena.allocate(4L * 16 * 128);
            attention.decode(0, batch, q, DType.FP16, 16, out);

            assertThatThrownBy(own::close).isInstanceOf(ResourceLeakException.class);
            assertThat(own.liveResources()).isZero();
            assertThatThrownBy(() -> attention.decode(0, batch, q, DType.FP16, 16, out))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("closed");
            MemorySegment k = Fp16Data.fp16(arena, Fp16Data.normal(random, 1, 4, 128, 4));
            assertThatThrownBy(() -> cache.append(0, batch, k, k, DType.FP16))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("closed");
            assertThatThrownBy(() -> cache.createSequence(64).fill(0, arena.allocate(4L * 64 * 128 * 2),
                    arena.allocate(4L * 64 * 128 * 2), DType.FP16)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("closed");
            assertThatThrownBy(device::close).isInstanceOf(CacheLeakException.class);
        } finally {
            own.close(); // idempotent
        }
    }

    /** What a failed call must leave as it was. */
    private record State(long managerBytes, long usedDeviceBytes, int openSequences) {
        static State of(DeviceKvCache device) {
            return new State(device.manager().usage().totalBytes(), device.usedDeviceBytes(),
                    device.manager().openSequences());
        }
    }

    private static Sequence filled(Arena arena, KvCacheManager cache, Random random, int tokens) {
        Sequence s = cache.createSequence(tokens, List.of(new TokenSpan(10, tokens - 20)), QuantConfig.defaults(1));
        s.fill(0, Fp16Data.fp16(arena, Fp16Data.normal(random, 4, tokens, 128, 4)),
                Fp16Data.fp16(arena, Fp16Data.normal(random, 4, tokens, 128, 0)), DType.FP16);
        return s;
    }

    /** The CPU reference's output over each sequence's downloaded layer, for queries drawn from {@code seed}. */
    private static List<MemorySegment> cpuDecodes(Arena arena, DeviceKvCache device, List<Sequence> batch, long seed) {
        Random r = new Random(seed);
        List<MemorySegment> outs = new ArrayList<>();
        for (Sequence s : batch) {
            MemorySegment q = Fp16Data.fp16(arena, Fp16Data.normal(r, 1, 16, 128, 0));
            MemorySegment out = arena.allocate(4L * 16 * 128);
            new ReferenceAttention(QuantConfig.defaults(1).calibration())
                    .decode(List.of(device.download(s, 0, arena)), q, DType.FP16, 16, out);
            outs.add(out);
        }
        return outs;
    }

    private static void assertSameBits(List<MemorySegment> now, List<MemorySegment> before, String call) {
        for (int i = 0; i < now.size(); i++) {
            assertThat(now.get(i).mismatch(before.get(i))).as("sequence %d changed by a failed %s", i, call)
                    .isEqualTo(-1);
        }
    }

    private void assertDecodesLikeTheCpu(Arena arena, DeviceKvCache device, List<Sequence> batch, Random random) {
        DeviceDecodeAttention attention = device.attention(QuantConfig.defaults(1).calibration());
        float[] qf = Fp16Data.normal(random, batch.size(), 16, 128, 0);
        MemorySegment q = Fp16Data.fp16(arena, qf);
        MemorySegment out = arena.allocate(4L * qf.length);
        attention.decode(0, batch, q, DType.FP16, 16, out);
        DecodeStepInfo step = attention.lastStep();
        List<LayerKvView> views = new ArrayList<>();
        for (Sequence s : batch) {
            views.add(device.download(s, 0, arena));
        }
        MemorySegment cpu = arena.allocate(out.byteSize());
        new ReferenceAttention(QuantConfig.defaults(1).calibration()).decode(views, q, DType.FP16, 16, cpu);
        assertThat(DecodeComparison.firstOutOfBound(qf, views, out, cpu, G, step.workItems(), step.tokenBlock()))
                .as("seed %d", gpu.seed()).isNull();
    }
}
