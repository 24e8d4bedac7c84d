package dev.calibquant.gpu;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.attention.ReferenceAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.testing.Fp16Data;
import dev.calibquant.testing.GpuFixture;
import dev.calibquant.testing.GpuTest;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

/**
 * A long run of one service's life on one device cache: {@value #DEFAULT_STEPS} decode steps (or
 * {@code -Dcalibquant.soak.steps}), each after one appended token per live sequence, with churn — sequences of random
 * prompt length (64–1,200 tokens, one visual span), generation limit (16–400 tokens) and reservation (none, 64 or
 * 512 tokens: some grow and move their layer) are created, filled and closed, up to {@value #MAX_LIVE} at once.
 * Every {@value #CHECK_EVERY} steps the step's output is checked against the CPU reference over the downloaded
 * layers, within the step's error bound. At the end the cache holds zero bytes, the driver's view of used device
 * memory has moved by no more than the context's own tracked allocations (no allocation outside them), and the
 * figures — steps, sequences, device memory at start, peak and end — are printed for the record.
 */
@GpuTest
class DeviceSoakGpuTest {
    static final int DEFAULT_STEPS = 100_000;
    static final int MAX_LIVE = 8;
    static final int CHECK_EVERY = 1_000;
    /** The driver's allocation granularity: a tracked buffer may take up to this much more than its size. */
    static final long PAGE = 2L << 20;
    private static final ModelGeometry G = new ModelGeometry(1, 16, 4, 128);
    private static final int MAX_PROMPT = 1_200;

    @RegisterExtension
    final GpuFixture gpu = new GpuFixture();

    @Test
    void decodeStepsWithAppendsAndChurnKeepMemoryFlatAndMatchTheCpu() {
        int steps = Integer.getInteger("calibquant.soak.steps", DEFAULT_STEPS);
        Random random = gpu.random();
        CudaContext ctx = gpu.context();
        Calibration calibration = QuantConfig.defaults(1).calibration();
        long start = System.nanoTime();
        try (Arena arena = Arena.ofConfined(); DeviceKvCache device = DeviceKvCache.open(ctx, G, 256L << 20)) {
            KvCacheManager cache = device.manager();
            DeviceDecodeAttention attention = device.attention(calibration);
            // random fp16 pools, sliced at random offsets: fresh-looking data without drawing 10⁸ normals
            MemorySegment promptPool = Fp16Data.fp16(arena, Fp16Data.normal(random, 2, 4 * MAX_PROMPT, 128, 4));
            MemorySegment rowPool = Fp16Data.fp16(arena, Fp16Data.normal(random, 64, 4 * MAX_LIVE, 128, 2));
            MemorySegment outputs = arena.allocate(4L * MAX_LIVE * 16 * 128);
            long driverUsedAtStart = driverUsed(ctx);
            long trackedAtStart = ctx.liveDeviceBytes();
            long peakTracked = trackedAtStart;
            long peakDriverUsed = driverUsedAtStart;
            List<Sequence> live = new ArrayList<>();
            List<Integer> limits = new ArrayList<>();
            int created = 0;
            int grown = 0;
            long appended = 0;
            double worst = 0;
            for (int step = 0; step < steps; step++) {
                if (live.size() < MAX_LIVE && (live.isEmpty() || random.nextInt(40) == 0)) {
                    int prompt = 64 + random.nextInt(MAX_PROMPT - 63);
                    int reserve = List.of(0, 64, 512).get(random.nextInt(3));
                    Sequence s = cache.createSequence(prompt, List.of(new TokenSpan(8, prompt - 16)),
                            QuantConfig.defaults(1), reserve);
                    long bytes = 4L * prompt * 128 * 2;
                    s.fill(0, slice(promptPool, bytes, random), slice(promptPool, bytes, random), DType.FP16);
                    live.add(s);
                    limits.add(prompt + 16 + random.nextInt(385));
                    grown += reserve == 0 ? 1 : 0;
                    created++;
                }
                for (int i = live.size() - 1; i >= 0; i--) {
                    if (live.get(i).tokens(0) >= limits.get(i) || random.nextInt(400) == 0) {
                        live.remove(i).close();
                        limits.remove(i);
                    }
                }
                if (live.isEmpty()) {
                    continue;
                }
                int b = live.size();
                long rows = 2L * b * 4 * 128;
                cache.append(0, live, slice(rowPool, rows, random), slice(rowPool, rows, random), DType.FP16);
                appended += b;
                MemorySegment q = slice(rowPool, 2L * b * 16 * 128, random);
                MemorySegment out = outputs.asSlice(0, 4L * b * 16 * 128);
                attention.decode(0, live, q, DType.FP16, 16, out);
                if (step % CHECK_EVERY == 0 || step == steps - 1) {
                    try (Arena check = Arena.ofConfined()) {
                        worst = Math.max(worst, checkAgainstCpu(check, device, live, q, out, attention.lastStep(),
                                calibration, step));
                    }
                    peakTracked = Math.max(peakTracked, ctx.liveDeviceBytes());
                    peakDriverUsed = Math.max(peakDriverUsed, driverUsed(ctx));
                }
            }
            live.forEach(Sequence::close);
            long trackedAtEnd = ctx.liveDeviceBytes();
            long driverUsedAtEnd = driverUsed(ctx);
            assertThat(cache.usage().totalBytes()).isZero();
            assertThat(device.usedDeviceBytes()).isZero();
            // whatever the driver reports beyond the context's tracked buffers stayed put (page rounding aside)
            long untrackedGrowth = (driverUsedAtEnd - trackedAtEnd) - (driverUsedAtStart - trackedAtStart);
            assertThat(untrackedGrowth).as("device memory used outside the tracked buffers, growth")
                    .isLessThanOrEqualTo(PAGE * ctx.liveResources());
            System.out.printf("[calibquant] DeviceSoakGpuTest: %d decode steps in %.1f s, %d sequences created (%d with "
                    + "no reservation), %d tokens appended, %d checkpoints, worst error %.3f of the bound; device memory "
                    + "tracked start %.1f MiB, peak %.1f MiB, end %.1f MiB (cache reservation %.1f MiB); driver used "
                    + "start %.1f MiB, peak %.1f MiB, end %.1f MiB%n", steps, (System.nanoTime() - start) / 1e9, created,
                    grown, appended, steps / CHECK_EVERY + 1, worst, mib(trackedAtStart), mib(peakTracked),
                    mib(trackedAtEnd), mib(device.deviceBytes()), mib(driverUsedAtStart), mib(peakDriverUsed),
                    mib(driverUsedAtEnd));
        }
    }

    private static MemorySegment slice(MemorySegment pool, long bytes, Random random) {
        long room = (pool.byteSize() - bytes) / 2;
        return pool.asSlice(2 * (room == 0 ? 0 : Math.floorMod(random.nextLong(), room + 1)), bytes);
    }

    private double checkAgainstCpu(Arena arena, DeviceKvCache device, List<Sequence> live, MemorySegment q,
            MemorySegment out, DecodeStepInfo step, Calibration calibration, int at) {
        List<LayerKvView> views = new ArrayList<>();
        for (Sequence s : live) {
            views.add(device.download(s, 0, arena));
        }
        MemorySegment cpu = arena.allocate(out.byteSize());
        new ReferenceAttention(calibration).decode(views, q, DType.FP16, 16, cpu);
        float[] qf = new float[(int) (q.byteSize() / 2)];
        for (int i = 0; i < qf.length; i++) {
            qf[i] = Float.float16ToFloat(q.getAtIndex(java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED, i));
        }
        DecodeComparison.Result r = DecodeComparison.compare(qf, views, out, cpu, G, step.workItems(), step.tokenBlock());
        assertThat(r.firstOutOfBound()).as("step %d, batch %d, seed %d", at, live.size(), gpu.seed()).isNull();
        return r.worstRatio();
    }

    private static long driverUsed(CudaContext ctx) {
        long[] info = ctx.memoryInfo();
        return info[1] - info[0];
    }

    private static double mib(long bytes) {
        return bytes / (1024.0 * 1024.0);
    }
}
