package dev.calibquant.gpu;

import dev.calibquant.testing.Fp16Data;
import dev.calibquant.kernels.DecodePlan;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.RandomSeedExtension;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The decode tables of a manager's sequences stored in two planes: built from a real manager (over a host stand-in
 * for the device storage), then the kernels' addressing (ptx/README.md) replayed on the planes must find exactly the
 * bytes the view holds; and layouts the kernels cannot read are refused by name.
 */
class ManagedTablesTest {

    @RegisterExtension
    final RandomSeedExtension seed = new RandomSeedExtension();

    private static final ModelGeometry GEOMETRY = new ModelGeometry(2, 8, 2, 64);
    private static final int PROMPT = 150;
    private static final List<TokenSpan> SPANS = List.of(new TokenSpan(5, 60), new TokenSpan(70, 141));
    private static final int APPENDS = 45; // 24 full-precision prompt tokens: capacity 64, grown once

    @ParameterizedTest(name = "{0} bits")
    @ValueSource(ints = {1, 2, 4})
    void replayingTheKernelsAddressingFindsWhatTheViewHolds(int bits) {
        Random random = seed.random();
        QuantConfig config = QuantConfig.defaults(bits);
        PlanarHostStorage storage = new PlanarHostStorage(1 << 22);
        try (Arena arena = Arena.ofShared();
                KvCacheManager planar = new KvCacheManager(GEOMETRY, DType.FP16, storage, KvCacheManager.NO_LIMIT);
                KvCacheManager host = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Sequence onPlanes = planar.createSequence(PROMPT, SPANS, config);
            Sequence onHost = host.createSequence(PROMPT, SPANS, config);
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                MemorySegment k = Fp16Data.fp16(arena, Fp16Data.normal(random, 2, PROMPT, 64, 4));
                MemorySegment v = Fp16Data.fp16(arena, Fp16Data.normal(random, 2, PROMPT, 64, 0));
                onPlanes.fill(l, k, v, DType.FP16);
                onHost.fill(l, k, v, DType.FP16);
            }
            for (int step = 0; step < APPENDS; step++) {
                for (int l = 0; l < GEOMETRY.layers(); l++) {
                    MemorySegment k = Fp16Data.fp16(arena, Fp16Data.normal(random, 1, 2, 64, 4));
                    MemorySegment v = Fp16Data.fp16(arena, Fp16Data.normal(random, 1, 2, 64, 0));
                    onPlanes.append(l, k, v, DType.FP16);
                    onHost.append(l, k, v, DType.FP16);
                }
            }
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                LayerKvView view = onPlanes.layer(l);
                assertSameLayer(view, onHost.layer(l));
                assertThat(view.fullCapacity()).isGreaterThan(64); // the growth moved the pair
                DecodePlan.Entry e = ManagedTables.entry(0, view, storage::locate);
                assertKernelsRead(storage, view, e);
            }
            onPlanes.close();
            onHost.close();
            assertThat(storage.liveBlocks()).isZero();
        }
    }

    private static void assertKernelsRead(PlanarHostStorage storage, LayerKvView view, DecodePlan.Entry e) {
        int kvh = view.kvHeads();
        int d = view.headDim();
        int cap = view.fullCapacity();
        assertThat(e.fullLength()).isEqualTo(view.fullTokens());
        assertThat(e.fullCapacity()).isEqualTo(cap);
        assertThat(e.fullOffset() % 16).isZero();
        for (int h = 0; h < kvh; h++) {
            for (int t = 0; t < view.fullTokens(); t++) {
                long row = ((long) h * cap + t) * d; // kernel: base + fp_off + (kvh*fp_cap + t)*D, fp16 elements
                MemorySegment k = storage.plane(0).asSlice(2 * (e.fullOffset() + row), 2L * d);
                MemorySegment v = storage.plane(1).asSlice(2 * (e.fullOffset() + row), 2L * d);
                assertThat(k.mismatch(view.fullKeys().asSlice(2 * row, 2L * d))).as("key row %d of head %d", t, h)
                        .isEqualTo(-1);
                assertThat(v.mismatch(view.fullValues().asSlice(2 * row, 2L * d))).as("value row %d of head %d", t, h)
                        .isEqualTo(-1);
            }
        }
        long scaleBytes = ManagedTables.scaleBytes(kvh, d);
        assertThat(e.spans()).hasSameSizeAs(view.visualSpans());
        for (int i = 0; i < view.visualSpans().size(); i++) {
            QuantizedSpan q = view.visualSpans().get(i);
            long code = e.codeOffsets()[i];   // kernel: kcode/vcode + code_off + (kvh*tokens + t)*RB, bytes
            long scale = e.scaleOffsets()[i]; // kernel: ksig/kalp/vsig/valp + scale_off + kvh*D, fp32 elements
            assertThat(e.spans().get(i).length()).isEqualTo(q.tokens());
            assertThat(code % 16).isZero();
            assertThat(scale % 16).isZero();
            long codeBytes = q.keyCodes().byteSize();
            assertSame(storage.plane(0).asSlice(code, codeBytes), q.keyCodes(), "key codes of span " + i);
            assertSame(storage.plane(1).asSlice(code, codeBytes), q.valueCodes(), "value codes of span " + i);
            // ksig and vsig are the plane bases, kalp and valp one scale array further (DeviceStorage.cachePointers)
            assertSame(storage.plane(0).asSlice(4 * scale, scaleBytes), q.keyScale(), "σK of span " + i);
            assertSame(storage.plane(0).asSlice(scaleBytes + 4 * scale, scaleBytes), q.keyOffset(), "αK of span " + i);
            assertSame(storage.plane(1).asSlice(4 * scale, scaleBytes), q.valueScale(), "σV of span " + i);
            assertSame(storage.plane(1).asSlice(scaleBytes + 4 * scale, scaleBytes), q.valueOffset(),
                    "αV of span " + i);
        }
    }

    private static void assertSame(MemorySegment actual, MemorySegment expected, String what) {
        assertThat(actual.byteSize()).as(what).isEqualTo(expected.byteSize());
        assertThat(actual.mismatch(expected)).as(what).isEqualTo(-1);
    }

    /** The pair layout changes no byte a CPU reader sees: the same views as host storage gives. */
    static void assertSameLayer(LayerKvView actual, LayerKvView expected) {
        assertThat(actual.fullTokens()).isEqualTo(expected.fullTokens());
        assertThat(actual.fullCapacity()).isEqualTo(expected.fullCapacity());
        assertSame(actual.fullKeys(), expected.fullKeys(), "full-precision keys");
        assertSame(actual.fullValues(), expected.fullValues(), "full-precision values");
        assertThat(actual.visualSpans()).hasSameSizeAs(expected.visualSpans());
        for (int i = 0; i < actual.visualSpans().size(); i++) {
            QuantizedSpan a = actual.visualSpans().get(i);
            QuantizedSpan b = expected.visualSpans().get(i);
            assertThat(a.tokens()).isEqualTo(b.tokens());
            assertThat(a.bits()).isEqualTo(b.bits());
            assertSame(a.keyCodes(), b.keyCodes(), "key codes of span " + i);
            assertSame(a.valueCodes(), b.valueCodes(), "value codes of span " + i);
            assertSame(a.keyScale(), b.keyScale(), "key scales of span " + i);
            assertSame(a.keyOffset(), b.keyOffset(), "key offsets of span " + i);
            assertSame(a.valueScale(), b.valueScale(), "value scales of span " + i);
            assertSame(a.valueOffset(), b.valueOffset(), "value offsets of span " + i);
        }
    }

    /** A well-formed layer (2 KV heads, head dim 64, one 1-bit span of 10 tokens) and where its parts lie. */
    private static final class Layout {
        static final long FULL = 4096;
        static final long SPAN = 8192;
        final long scaleBytes = ManagedTables.scaleBytes(2, 64);
        final QuantizedSpan span;
        final LayerKvView view;
        final Map<MemorySegment, DeviceStorage.Placement> at = new IdentityHashMap<>();

        Layout(Arena arena, Granularity keyGranularity) {
            this(arena, keyGranularity, ManagedTables.scaleBytes(2, 64));
        }

        Layout(Arena arena, Granularity keyGranularity, long valueOffsetBytes) {
            long full = 2L * 2 * 64 * 64;
            long codes = 2L * 10 * 64 / 8;
            long keyScales = keyGranularity == Granularity.PER_TOKEN ? 4L * 2 * 10 : scaleBytes;
            span = new QuantizedSpan(10, 2, 64, 1, keyGranularity, Granularity.PER_CHANNEL,
                    arena.allocate(codes), arena.allocate(codes), arena.allocate(keyScales), arena.allocate(keyScales),
                    arena.allocate(scaleBytes), arena.allocate(valueOffsetBytes));
            view = new DownloadedLayer(2, 64, DType.FP16, 3, 64, arena.allocate(full), arena.allocate(full),
                    List.of(span));
            at.put(view.fullKeys(), new DeviceStorage.Placement(0, FULL));
            at.put(view.fullValues(), new DeviceStorage.Placement(1, FULL));
            at.put(span.keyScale(), new DeviceStorage.Placement(0, SPAN));
            at.put(span.keyOffset(), new DeviceStorage.Placement(0, SPAN + scaleBytes));
            at.put(span.keyCodes(), new DeviceStorage.Placement(0, SPAN + 2 * scaleBytes));
            at.put(span.valueScale(), new DeviceStorage.Placement(1, SPAN));
            at.put(span.valueOffset(), new DeviceStorage.Placement(1, SPAN + scaleBytes));
            at.put(span.valueCodes(), new DeviceStorage.Placement(1, SPAN + 2 * scaleBytes));
        }

        DecodePlan.Entry entry() {
            return ManagedTables.entry(3, view, at::get);
        }
    }

    @Test
    void aWellFormedLayoutGivesTheKernelsOffsets() {
        try (Arena arena = Arena.ofConfined()) {
            Layout layout = new Layout(arena, Granularity.PER_CHANNEL);
            DecodePlan.Entry e = layout.entry();
            assertThat(e.fullOffset()).isEqualTo(Layout.FULL / 2);
            assertThat(e.fullLength()).isEqualTo(3);
            assertThat(e.fullCapacity()).isEqualTo(64);
            assertThat(e.scaleOffsets()).containsExactly(Layout.SPAN / 4);
            assertThat(e.codeOffsets()).containsExactly(Layout.SPAN + 2 * layout.scaleBytes);
            assertThat(e.spans()).containsExactly(new TokenSpan(0, 10));
        }
    }

    @Test
    void layoutsTheKernelsCannotReadAreRefusedByName() {
        try (Arena arena = Arena.ofConfined()) {
            Layout l = new Layout(arena, Granularity.PER_CHANNEL);
            l.at.put(l.view.fullValues(), new DeviceStorage.Placement(1, Layout.FULL + 64));
            assertThatThrownBy(l::entry).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("sequence 3 of the batch full-precision keys and values are not a pair");

            Layout swapped = new Layout(arena, Granularity.PER_CHANNEL);
            swapped.at.put(swapped.view.fullKeys(), new DeviceStorage.Placement(1, Layout.FULL));
            swapped.at.put(swapped.view.fullValues(), new DeviceStorage.Placement(0, Layout.FULL));
            assertThatThrownBy(swapped::entry).hasMessageContaining("not a pair at one offset of planes 0 and 1");

            Layout misaligned = new Layout(arena, Granularity.PER_CHANNEL);
            misaligned.at.put(misaligned.view.fullKeys(), new DeviceStorage.Placement(0, Layout.FULL + 16));
            misaligned.at.put(misaligned.view.fullValues(), new DeviceStorage.Placement(1, Layout.FULL + 16));
            assertThatThrownBy(misaligned::entry).hasMessageContaining("full-precision block lies at byte 4112")
                    .hasMessageContaining("not a multiple of 32");

            Layout scales = new Layout(arena, Granularity.PER_CHANNEL);
            for (MemorySegment m : List.of(scales.span.keyScale(), scales.span.keyOffset(), scales.span.keyCodes(),
                    scales.span.valueScale(), scales.span.valueOffset(), scales.span.valueCodes())) {
                DeviceStorage.Placement p = scales.at.get(m);
                scales.at.put(m, new DeviceStorage.Placement(p.plane(), p.offset() + 32));
            }
            assertThatThrownBy(scales::entry).hasMessageContaining("visual span 0 scales lies at byte 8224")
                    .hasMessageContaining("not a multiple of 64");

            Layout alpha = new Layout(arena, Granularity.PER_CHANNEL);
            alpha.at.put(alpha.span.keyOffset(), new DeviceStorage.Placement(0, Layout.SPAN + 2 * alpha.scaleBytes));
            assertThatThrownBy(alpha::entry).hasMessageContaining("visual span 0 key offsets (αK) lie at");

            Layout codes = new Layout(arena, Granularity.PER_CHANNEL);
            codes.at.put(codes.span.valueCodes(), new DeviceStorage.Placement(0, Layout.SPAN + 2 * codes.scaleBytes));
            assertThatThrownBy(codes::entry).hasMessageContaining("visual span 0 value codes lie at");

            Layout perToken = new Layout(arena, Granularity.PER_TOKEN);
            assertThatThrownBy(perToken::entry).hasMessageContaining("per-channel scales of 512 bytes");

            Layout shortAlpha = new Layout(arena, Granularity.PER_CHANNEL, 508);
            assertThatThrownBy(shortAlpha::entry).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("visual span 0: the GPU kernels read per-channel scales of 512 bytes")
                    .hasMessageContaining("512, 512, 512 and 508");
        }
    }

    @Test
    void planesHoldHalfTheLimitWithHeadroom() {
        assertThat(DeviceStorage.planeBytesFor(1_000_000)).isEqualTo(500_000 + 31_250);
        assertThat(DeviceStorage.planeBytesFor(3)).isEqualTo(2 + 1);
        assertThatThrownBy(() -> DeviceStorage.planeBytesFor(KvCacheManager.NO_LIMIT))
                .hasMessageContaining("finite, positive byte limit");
        assertThatThrownBy(() -> DeviceStorage.planeBytesFor(0)).isInstanceOf(IllegalArgumentException.class);
    }
}
