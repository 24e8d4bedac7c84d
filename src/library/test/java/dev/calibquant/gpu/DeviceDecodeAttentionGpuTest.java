package dev.calibquant.gpu;

import dev.calibquant.testing.Fp16Data;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.attention.ReferenceAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.CalibrationPolicy;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.NonFiniteInputException;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.testing.GpuFixture;
import dev.calibquant.testing.GpuTest;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * GPU decode attention over a cache manager stored in device memory, against the double-precision
 * {@link ReferenceAttention} on the same layers read back from the device: fresh random prompts (never zero), several
 * visual spans, appended tokens (crossing a growth of the full-precision pair in one case), outputs poisoned (NaN)
 * before each launch.
 *
 * <p>The tolerance is {@link DecodeErrorBound#attentionTolerance}, derived there from the kernels' arithmetic:
 * {@code tol = (6E + 2^-21 + (BN + N/BN + items + 8)·2^-24)·Vmax} with {@code E = (D + 4)·2^-23·‖q‖₁·Kmax/√D}, per
 * output row. The reference reads the cache as the GPU wrote it (downloaded), so only attention error is measured.
 */
@GpuTest
class DeviceDecodeAttentionGpuTest {
    private static final long LIMIT = 1L << 30;

    @RegisterExtension
    final GpuFixture gpu = new GpuFixture();

    /** @param bits 1, 2 or 4 with visual spans; 0 for sequences kept wholly in full precision */
    record Case(int batch, int kvHeads, int group, int headDim, int bits, boolean calibrate, CalibrationPolicy policy,
            int[] spanLengths, int maxSpans, int prefix, int text, int appends) {
        @Override
        public String toString() {
            return "B" + batch + " kvh" + kvHeads + " G" + group + " D" + headDim
                    + (bits == 0 ? " fp16" : " bits" + bits + (calibrate ? " calib-" + policy : " no-calib"))
                    + " spans" + Arrays.toString(spanLengths) + "x" + maxSpans + " appends" + appends;
        }
    }

    static Stream<Arguments> cases() {
        CalibrationPolicy ref = CalibrationPolicy.REFERENCE;
        CalibrationPolicy clamp = CalibrationPolicy.CLAMP_AT_ZERO;
        List<Case> cases = List.of(
                new Case(1, 8, 4, 128, 1, true, ref, new int[] {3328}, 1, 41, 64, 3),
                // 5 + gaps + 9 full-precision tokens: capacity 64, grown by the 70 appends
                new Case(3, 2, 1, 64, 2, true, clamp, new int[] {1, 7, 255}, 3, 5, 9, 70),
                new Case(2, 1, 8, 128, 4, false, ref, new int[] {10_000}, 1, 3, 20, 1),
                new Case(5, 4, 2, 64, 1, true, ref, new int[] {1, 7, 255, 3328}, 3, 17, 30, 2),
                new Case(64, 8, 4, 128, 1, true, ref, new int[] {3328}, 1, 41, 64, 1),
                new Case(4, 8, 4, 128, 0, false, ref, new int[] {}, 0, 41, 64, 2),
                new Case(2, 2, 8, 64, 0, false, ref, new int[] {}, 0, 300, 0, 1));
        Stream<Arguments> hopper = cases.stream().map(c -> Arguments.of(KernelCatalog.HOPPER, c));
        Stream<Arguments> ampere = Stream.of(cases.get(1), cases.get(3), cases.get(6))
                .map(c -> Arguments.of(KernelCatalog.AMPERE, c));
        return Stream.concat(hopper, ampere);
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("cases")
    void gpuDecodeOverTheManagersSequencesMatchesTheReference(String target, Case c) {
        Random random = gpu.random();
        ModelGeometry g = new ModelGeometry(1, c.kvHeads() * c.group(), c.kvHeads(), c.headDim());
        QuantConfig config = c.bits() == 0 ? null
                : QuantConfig.defaults(c.bits()).withCalibrate(c.calibrate()).withPolicy(c.policy());
        Calibration calibration = config == null ? Calibration.OFF : config.calibration();
        try (Arena arena = Arena.ofConfined();
                DeviceKvCache device = DeviceKvCache.open(gpu.context(), g, LIMIT,
                        DeviceKvCache.KernelChoice.of(target, false))) {
            KvCacheManager cache = device.manager();
            DeviceDecodeAttention attention = device.attention(calibration);
            List<Sequence> batch = new ArrayList<>();
            for (int b = 0; b < c.batch(); b++) {
                batch.add(prompt(arena, cache, c, config));
            }
            for (int step = 0; step < c.appends(); step++) {
                if (step % 2 == 0) { // one sequence at a time, and the whole batch in one launch
                    for (Sequence s : batch) {
                        s.append(0, Fp16Data.fp16(arena, Fp16Data.normal(random, 1, c.kvHeads(), c.headDim(), 4)),
                                Fp16Data.fp16(arena, Fp16Data.normal(random, 1, c.kvHeads(), c.headDim(), 0)),
                                DType.FP16);
                    }
                } else {
                    cache.append(0, batch,
                            Fp16Data.fp16(arena, Fp16Data.normal(random, c.batch(), c.kvHeads(), c.headDim(), 4)),
                            Fp16Data.fp16(arena, Fp16Data.normal(random, c.batch(), c.kvHeads(), c.headDim(), 0)),
                            DType.FP16);
                }
            }
            float[] qf = Fp16Data.normal(random, c.batch(), g.queryHeads(), c.headDim(), 0);
            MemorySegment q = Fp16Data.fp16(arena, qf);
            MemorySegment gpuOut = arena.allocate(4L * qf.length);
            attention.poisonOutputs(true);
            attention.decode(0, batch, q, DType.FP16, g.queryHeads(), gpuOut);
            DecodeStepInfo plan = attention.lastStep();

            List<LayerKvView> views = new ArrayList<>();
            for (Sequence s : batch) {
                views.add(device.download(s, 0, arena));
            }
            MemorySegment cpuOut = arena.allocate(gpuOut.byteSize());
            new ReferenceAttention(calibration).decode(views, q, DType.FP16, g.queryHeads(), cpuOut);
            String failure = DecodeComparison.firstOutOfBound(qf, views, gpuOut, cpuOut, g, plan.workItems(), plan.tokenBlock());
            assertThat(failure).as("seed " + gpu.seed() + " " + target + " " + c + " (" + plan.workItems()
                    + " items, mode " + plan.calibrationMode() + ")").isNull();

            // the same step through the DecodeAttention interface, over views taken by the caller
            MemorySegment viaViews = arena.allocate(gpuOut.byteSize());
            attention.decode(batch.stream().map(s -> s.layer(0)).toList(), q, DType.FP16, g.queryHeads(), viaViews);
            assertThat(DecodeComparison.firstOutOfBound(qf, views, viaViews, cpuOut, g, plan.workItems(), plan.tokenBlock()))
                    .as("seed " + gpu.seed() + " " + target + " " + c + " through views").isNull();

            // the same step prepared once on the device, launched on device queries into a poisoned device output
            try (var dq = gpu.context().allocate(q.byteSize()); var dout = gpu.context().allocate(gpuOut.byteSize());
                    var stream = gpu.context().createStream();
                    DeviceDecodeAttention.PreparedStep step = attention.prepare(0, batch)) {
                dq.copyFrom(q);
                step.launch(dq, dout, stream);
                stream.synchronize();
                MemorySegment prepared = arena.allocate(gpuOut.byteSize());
                dout.copyTo(prepared);
                assertThat(DecodeComparison.firstOutOfBound(qf, views, prepared, cpuOut, g, step.info().workItems(), step.info().tokenBlock()))
                        .as("seed " + gpu.seed() + " " + target + " " + c + " prepared").isNull();
                cache.append(0, batch, arena.allocate(2L * c.batch() * c.kvHeads() * c.headDim()),
                        arena.allocate(2L * c.batch() * c.kvHeads() * c.headDim()), DType.FP16);
                assertThatThrownBy(() -> step.launch(dq, dout, stream)).isInstanceOf(IllegalStateException.class)
                        .hasMessageContaining("prepare the step again");
            }
            batch.forEach(Sequence::close);
        }
    }

    /** A sequence of 1..maxSpans random spans between prefix and text, every layer filled. */
    private Sequence prompt(Arena arena, KvCacheManager cache, Case c, QuantConfig config) {
        Random random = gpu.random();
        int nSpans = c.maxSpans() == 0 ? 0 : 1 + random.nextInt(c.maxSpans());
        List<TokenSpan> spans = new ArrayList<>();
        int at = c.prefix();
        for (int i = 0; i < nSpans; i++) {
            int len = c.spanLengths()[random.nextInt(c.spanLengths().length)];
            spans.add(new TokenSpan(at, at + len));
            at += len + (i + 1 < nSpans ? 1 + random.nextInt(5) : 0);
        }
        int tokens = at + c.text();
        Sequence s = cache.createSequence(tokens, spans, config);
        s.fill(0, Fp16Data.fp16(arena, Fp16Data.normal(random, c.kvHeads(), tokens, c.headDim(), 4)),
                Fp16Data.fp16(arena, Fp16Data.normal(random, c.kvHeads(), tokens, c.headDim(), 0)), DType.FP16);
        return s;
    }


    @Test
    void badInputIsRefusedBeforeTheGpuSeesIt() {
        Random random = gpu.random();
        ModelGeometry g = new ModelGeometry(1, 8, 2, 128);
        try (Arena arena = Arena.ofConfined();
                DeviceKvCache device = DeviceKvCache.open(gpu.context(), g, LIMIT);
                KvCacheManager host = KvCacheManager.onHost(g, DType.FP16)) {
            KvCacheManager cache = device.manager();
            DeviceDecodeAttention attention = device.attention(QuantConfig.defaults(1).calibration());
            Case c = new Case(1, 2, 4, 128, 1, true, CalibrationPolicy.REFERENCE, new int[] {100}, 1, 10, 10, 0);
            Sequence one = prompt(arena, cache, c, QuantConfig.defaults(1));
            Sequence two = prompt(arena, cache, c, QuantConfig.defaults(2));
            Sequence onHost = prompt(arena, host, c, QuantConfig.defaults(1));
            MemorySegment q = Fp16Data.fp16(arena, Fp16Data.normal(random, 2, 8, 128, 0));
            MemorySegment q1 = q.asSlice(0, q.byteSize() / 2);
            MemorySegment out = arena.allocate(4L * 2 * 8 * 128);
            out.fill((byte) 0x5a);
            MemorySegment untouched = arena.allocate(out.byteSize()).copyFrom(out);

            assertThatThrownBy(() -> attention.decode(0, List.of(onHost), q1, DType.FP16, 8, out.asSlice(0, out.byteSize() / 2)))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("not in a live block");
            assertThatThrownBy(() -> attention.decode(0, List.of(one, two), q, DType.FP16, 8, out))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("mixes 1- and 2-bit");
            assertThatThrownBy(() -> attention.decode(0, List.of(one, one), q, DType.FP16, 8, out))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("twice");
            assertThatThrownBy(() -> attention.decode(0, List.of(one), q, DType.FP16, 8, out))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("queries");
            assertThatThrownBy(() -> attention.decode(0, List.of(one), q1, DType.FP16, 7, out.asSlice(0, out.byteSize() / 2)))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("7 query heads is not a positive multiple of 2 KV heads");
            MemorySegment nan = arena.allocate(q1.byteSize()).copyFrom(q1);
            nan.set(ValueLayout.JAVA_SHORT_UNALIGNED, 2L * (128 * 5 + 7), (short) 0x7e00);
            assertThatThrownBy(() -> attention.decode(0, List.of(one), nan, DType.FP16, 8, out.asSlice(0, out.byteSize() / 2)))
                    .isInstanceOf(NonFiniteInputException.class).hasMessageContaining("head 5");
            LayerKvView before = one.layer(0);
            for (int i = 0; i < 60; i++) { // 20 full-precision tokens, capacity 64: the pair moves
                one.append(0, Fp16Data.fp16(arena, Fp16Data.normal(random, 1, 2, 128, 4)),
                        Fp16Data.fp16(arena, Fp16Data.normal(random, 1, 2, 128, 0)), DType.FP16);
            }
            assertThatThrownBy(() -> attention.decode(List.of(before), q1, DType.FP16, 8, out.asSlice(0, out.byteSize() / 2)))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("freed since");
            assertThat(out.mismatch(untouched)).isEqualTo(-1);
            one.close();
            two.close();
            onHost.close();
        }
    }

    /**
     * A step whose launch is refused after its tables and queries were queued for upload from pinned memory (the
     * kernel's module is unloaded between two steps): the refusal reaches the caller, the output is untouched, and the
     * storage serves the next attention. Before rethrowing, the step waits for its stream, as the next step rewrites
     * those pinned buffers and close frees them. That wait is not observable from here (copies of a few KiB are done
     * in microseconds, and the bindings have no cuStreamQuery) and the path cannot run without a GPU (the attention
     * needs a device storage and loaded kernels), so this test runs it on one and checks what it leaves behind.
     */
    @Test
    void aStepRefusedAtLaunchLeavesTheOutputUntouchedAndTheStorageUsable() {
        ModelGeometry g = new ModelGeometry(1, 8, 2, 128);
        Case c = new Case(1, 2, 4, 128, 0, false, CalibrationPolicy.REFERENCE, new int[] {}, 0, 41, 64, 0);
        try (Arena arena = Arena.ofConfined(); KernelCatalog unloaded = KernelCatalog.open(gpu.context());
                DeviceStorage storage = new DeviceStorage(gpu.context(), DeviceStorage.planeBytesFor(LIMIT), unloaded);
                KvCacheManager cache = new KvCacheManager(g, DType.FP16, storage, LIMIT);
                DeviceDecodeAttention attention = new DeviceDecodeAttention(storage, g, Calibration.OFF)) {
            Sequence s = prompt(arena, cache, c, null);
            float[] qf = Fp16Data.normal(gpu.random(), 1, g.queryHeads(), g.headDim(), 0);
            MemorySegment q = Fp16Data.fp16(arena, qf);
            MemorySegment out = arena.allocate(4L * qf.length);
            attention.decode(0, List.of(s), q, DType.FP16, g.queryHeads(), out); // resolves the step's kernel
            List<LayerKvView> views = List.of(storage.download(s, 0, arena));
            MemorySegment cpu = arena.allocate(out.byteSize());
            new ReferenceAttention(Calibration.OFF).decode(views, q, DType.FP16, g.queryHeads(), cpu);
            assertThat(DecodeComparison.firstOutOfBound(qf, views, out, cpu, g, attention.lastStep().workItems(),
                    attention.lastStep().tokenBlock())).as("seed " + gpu.seed()).isNull();
            unloaded.close(); // the kernel object stays cached; its module is gone, so its launch is refused
            out.fill((byte) 0x5a);
            MemorySegment untouched = arena.allocate(out.byteSize()).copyFrom(out);
            assertThatThrownBy(() -> attention.decode(0, List.of(s), q, DType.FP16, g.queryHeads(), out))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("CUDA module")
                    .hasMessageContaining("closed");
            assertThat(out.mismatch(untouched)).isEqualTo(-1);
            // the storage's stream still serves: the layer reads back as before
            LayerKvView again = storage.download(s, 0, arena);
            assertThat(again.fullKeys().mismatch(views.getFirst().fullKeys())).isEqualTo(-1);
            s.close();
        }
    }

    @Test
    void cachesTheKernelsCannotReadAreRefusedByName() {
        KernelCatalog catalog = gpu.catalog();
        try (Arena arena = Arena.ofConfined()) {
            Case c = new Case(1, 1, 16, 64, 1, true, CalibrationPolicy.REFERENCE, new int[] {50}, 1, 10, 10, 0);
            String wideGroup = refusal(arena, catalog, new ModelGeometry(1, 16, 1, 64), DType.FP16, c,
                    QuantConfig.defaults(1));
            assertThat(wideGroup).contains("GQA group of 16");
            String headDim = refusal(arena, catalog, new ModelGeometry(1, 4, 1, 32), DType.FP16,
                    new Case(1, 1, 4, 32, 1, true, CalibrationPolicy.REFERENCE, new int[] {50}, 1, 10, 10, 0),
                    QuantConfig.defaults(1));
            assertThat(headDim).contains("head dim 64 and 128, not 32");
            Case c4 = new Case(1, 1, 4, 64, 1, true, CalibrationPolicy.REFERENCE, new int[] {50}, 1, 10, 10, 0);
            String perToken = refusal(arena, catalog, new ModelGeometry(1, 4, 1, 64), DType.FP16, c4,
                    QuantConfig.defaults(1).withValueGranularity(Granularity.PER_TOKEN));
            assertThat(perToken).contains("per-channel statistics");
            String eightBits = refusal(arena, catalog, new ModelGeometry(1, 4, 1, 64), DType.FP16, c4,
                    QuantConfig.defaults(8));
            assertThat(eightBits).contains("1, 2 and 4 bits, not 8");
            String bf16 = refusal(arena, catalog, new ModelGeometry(1, 4, 1, 64), DType.BF16, c4, null);
            assertThat(bf16).contains("fp16 caches; this one is BF16");
        }
    }

    /** The message of the refusal to decode one sequence of such a cache. */
    private String refusal(Arena arena, KernelCatalog catalog, ModelGeometry g, DType dtype, Case c,
            QuantConfig config) {
        Random random = gpu.random();
        try (DeviceStorage storage = new DeviceStorage(gpu.context(), DeviceStorage.planeBytesFor(1 << 24), catalog);
                KvCacheManager cache = new KvCacheManager(g, dtype, storage, 1 << 24);
                DeviceDecodeAttention attention = new DeviceDecodeAttention(storage, g, Calibration.OFF)) {
            int tokens = c.prefix() + c.spanLengths()[0] + c.text();
            List<TokenSpan> spans = config == null ? List.of()
                    : List.of(new TokenSpan(c.prefix(), c.prefix() + c.spanLengths()[0]));
            Sequence s = cache.createSequence(tokens, spans, config);
            float[] k = Fp16Data.normal(random, g.kvHeads(), tokens, g.headDim(), 4);
            float[] v = Fp16Data.normal(random, g.kvHeads(), tokens, g.headDim(), 0);
            s.fill(0, dev.calibquant.quant.TestTensors.write(arena, dtype, k),
                    dev.calibquant.quant.TestTensors.write(arena, dtype, v), dtype);
            MemorySegment q = Fp16Data.fp16(arena, Fp16Data.normal(random, 1, g.queryHeads(), g.headDim(), 0));
            MemorySegment out = arena.allocate(4L * g.queryHeads() * g.headDim());
            try {
                attention.decode(0, List.of(s), q, DType.FP16, g.queryHeads(), out);
                return "decoded without refusal";
            } catch (IllegalArgumentException e) { // InvalidShapeException is one
                return e.getMessage();
            } finally {
                s.close();
            }
        }
    }
}
