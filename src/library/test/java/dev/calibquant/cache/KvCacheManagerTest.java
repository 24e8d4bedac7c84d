package dev.calibquant.cache;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.quant.ChannelQuantizer;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.KvSlice;
import dev.calibquant.quant.NonFiniteInputException;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.atomic.AtomicBoolean;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

class KvCacheManagerTest {

    @RegisterExtension
    final RandomSeedExtension seed = new RandomSeedExtension();

    static final ModelGeometry GEOMETRY = new ModelGeometry(2, 8, 2, 32);
    static final QuantConfig ONE_BIT = QuantConfig.defaults(1);

    /** One prompt's keys and values for every layer, and where its visual spans are. */
    record Prompt(int tokens, List<TokenSpan> spans, DType dtype, MemorySegment[] keys, MemorySegment[] values) {

        static Prompt random(Arena arena, Random random, DType dtype, int tokens, List<TokenSpan> spans) {
            MemorySegment[] keys = new MemorySegment[GEOMETRY.layers()];
            MemorySegment[] values = new MemorySegment[GEOMETRY.layers()];
            for (int l = 0; l < keys.length; l++) {
                keys[l] = KvData.normal(arena, random, dtype, GEOMETRY.kvHeads(), tokens, GEOMETRY.headDim());
                values[l] = KvData.normal(arena, random, dtype, GEOMETRY.kvHeads(), tokens, GEOMETRY.headDim());
            }
            return new Prompt(tokens, spans, dtype, keys, values);
        }

        /** Positions kept in full precision, in order. */
        List<Integer> textPositions() {
            List<Integer> positions = new ArrayList<>();
            for (int n = 0; n < tokens; n++) {
                int at = n;
                if (spans.stream().noneMatch(s -> at >= s.start() && at < s.end())) {
                    positions.add(n);
                }
            }
            return positions;
        }

        void fill(Sequence sequence, int layer) {
            sequence.fill(layer, keys[layer], values[layer], dtype);
        }

        void fillAll(Sequence sequence) {
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                fill(sequence, l);
            }
        }
    }

    private static void assertRow(MemorySegment block, int capacity, int row, MemorySegment source, int sourceTokens,
            int token, DType dtype, int head) {
        MemorySegment stored = KvData.row(block, dtype, capacity, GEOMETRY.headDim(), head, row);
        MemorySegment expected = KvData.row(source, dtype, sourceTokens, GEOMETRY.headDim(), head, token);
        assertThat(stored.mismatch(expected)).as("head %d row %d (token %d)", head, row, token).isEqualTo(-1);
    }

    private static void assertSameBytes(MemorySegment actual, MemorySegment expected, String what) {
        assertThat(actual.byteSize()).as(what).isEqualTo(expected.byteSize());
        assertThat(actual.mismatch(expected)).as(what).isEqualTo(-1);
    }

    @ParameterizedTest
    @EnumSource(DType.class)
    void fillKeepsTextExactAndQuantizesEachSpanOnItsOwn(DType dtype) {
        Random random = seed.random();
        // Spans given out of order, two of them adjacent, text between and after them.
        List<TokenSpan> spans = List.of(new TokenSpan(30, 41), new TokenSpan(5, 12), new TokenSpan(12, 20));
        HostStorage storage = new HostStorage();
        try (Arena arena = Arena.ofConfined();
                KvCacheManager cache = new KvCacheManager(GEOMETRY, dtype, storage, KvCacheManager.NO_LIMIT);
                Sequence sequence = cache.createSequence(50, spans, ONE_BIT)) {
            Prompt prompt = Prompt.random(arena, random, dtype, 50, spans);
            prompt.fillAll(sequence);
            assertThat(sequence.visualSpans()).containsExactly(new TokenSpan(5, 12), new TokenSpan(12, 20),
                    new TokenSpan(30, 41));
            List<Integer> text = prompt.textPositions();
            for (int l = 0; l < GEOMETRY.layers(); l++) {
                LayerKvView view = sequence.layer(l);
                assertThat(sequence.tokens(l)).isEqualTo(50);
                assertThat(view.dtype()).isEqualTo(dtype);
                assertThat(view.fullTokens()).isEqualTo(text.size()).isEqualTo(50 - 26);
                assertThat(view.fullCapacity()).isGreaterThan(view.fullTokens());
                for (int h = 0; h < GEOMETRY.kvHeads(); h++) {
                    for (int i = 0; i < text.size(); i++) {
                        assertRow(view.fullKeys(), view.fullCapacity(), i, prompt.keys[l], 50, text.get(i), dtype, h);
                        assertRow(view.fullValues(), view.fullCapacity(), i, prompt.values[l], 50, text.get(i), dtype,
                                h);
                    }
                }
                assertThat(view.visualSpans()).hasSize(3);
                for (int s = 0; s < 3; s++) {
                    TokenSpan span = sequence.visualSpans().get(s);
                    QuantizedSpan expected = ChannelQuantizer.quantize(ONE_BIT,
                            KvSlice.ofTokens(prompt.keys[l], dtype, 2, 50, 32, span.start(), span.end()),
                            KvSlice.ofTokens(prompt.values[l], dtype, 2, 50, 32, span.start(), span.end()), arena);
                    QuantizedSpan stored = view.visualSpans().get(s);
                    assertThat(stored.tokens()).isEqualTo(span.length());
                    assertThat(stored.bits()).isEqualTo(1);
                    assertSameBytes(stored.keyCodes(), expected.keyCodes(), "key codes of span " + span);
                    assertSameBytes(stored.valueCodes(), expected.valueCodes(), "value codes of span " + span);
                    assertSameBytes(stored.keyScale(), expected.keyScale(), "key scales of span " + span);
                    assertSameBytes(stored.keyOffset(), expected.keyOffset(), "key offsets of span " + span);
                    assertSameBytes(stored.valueScale(), expected.valueScale(), "value scales of span " + span);
                    assertSameBytes(stored.valueOffset(), expected.valueOffset(), "value offsets of span " + span);
                    assertThat(stored.keyCodes().isReadOnly()).isTrue();
                }
            }
        }
        assertThat(storage.liveBytes()).isZero();
    }

    @Test
    void layersQuantizeEachTheirOwnWayAndAreAccountedSo() {
        Random random = seed.random();
        HostStorage storage = new HostStorage();
        QuantConfig wide = ONE_BIT.withParamType(DType.FP16).withWideKeyChannels(16);
        List<QuantConfig> configs = List.of(ONE_BIT, wide);
        List<TokenSpan> spans = List.of(new TokenSpan(3, 43));
        try (Arena arena = Arena.ofConfined();
                KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, storage, KvCacheManager.NO_LIMIT)) {
            Sequence s = cache.createSequencePerLayer(50, spans, configs, 0);
            assertThat(s.quantConfigs()).containsExactlyElementsOf(configs);
            assertThatThrownBy(s::quantConfig).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("quantizes its layers differently");
            assertThat(s.fillBytes(1)).isLessThan(s.fillBytes(0)); // fp16 parameters outweigh the wide channels here
            assertThat(s.fillBytes()).isEqualTo(s.fillBytes(0));
            Prompt prompt = Prompt.random(arena, random, DType.FP16, 50, spans);
            prompt.fillAll(s);
            for (int l = 0; l < 2; l++) {
                QuantizedSpan stored = s.layer(l).visualSpans().getFirst();
                QuantizedSpan expected = ChannelQuantizer.quantize(configs.get(l),
                        KvSlice.ofTokens(prompt.keys[l], DType.FP16, 2, 50, 32, 3, 43),
                        KvSlice.ofTokens(prompt.values[l], DType.FP16, 2, 50, 32, 3, 43), arena);
                assertThat(stored.paramType()).isEqualTo(configs.get(l).paramType());
                assertSameBytes(stored.keyCodes(), expected.keyCodes(), "key codes of layer " + l);
                assertSameBytes(stored.keyScale(), expected.keyScale(), "key scales of layer " + l);
                if (l == 1) {
                    assertSameBytes(stored.wideKeys().mask(), expected.wideKeys().mask(), "mask");
                    assertSameBytes(stored.wideKeys().lowBits(), expected.wideKeys().lowBits(), "low bits");
                } else {
                    assertThat(stored.wideKeys()).isNull();
                }
            }
            long codes = 0;
            long params = 0;
            for (QuantConfig c : configs) { // 40 visual tokens, 2 KV heads, head dim 32
                long all = ChannelQuantizer.bytesFor(c, 2, 40, 32);
                long p = 2L * 2 * 2 * 32 * c.paramType().byteSize();
                codes += all - p;
                params += p;
            }
            assertThat(s.usage().visualCodeBytes()).isEqualTo(codes);
            assertThat(s.usage().visualScaleBytes()).isEqualTo(params);
            assertThat(storage.liveBytes()).isEqualTo(cache.usage().totalBytes());
            s.close();

            assertThatThrownBy(() -> cache.createSequencePerLayer(50, spans, List.of(ONE_BIT), 0))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("1 layer configs for a model of 2");
            java.util.ArrayList<QuantConfig> withNull = new java.util.ArrayList<>(java.util.Arrays.asList(ONE_BIT, null));
            assertThatThrownBy(() -> cache.createSequencePerLayer(50, spans, withNull, 0))
                    .hasMessageContaining("need a quantization config for layer 1");
            assertThatThrownBy(() -> cache.createSequencePerLayer(50, spans, List.of(ONE_BIT, ONE_BIT.withWideKeyChannels(40)), 0))
                    .hasMessageContaining("wideKeyChannels 40 exceeds the head dimension 32");
            assertThat(cache.openSequences()).isZero();
        }
        assertThat(storage.liveBytes()).isZero();
    }

    @Test
    void accountingCountsEveryKindAgainstTheLayout() {
        Random random = seed.random();
        HostStorage storage = new HostStorage();
        try (Arena arena = Arena.ofConfined();
                KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, storage, KvCacheManager.NO_LIMIT)) {
            List<TokenSpan> spans = List.of(new TokenSpan(3, 131), new TokenSpan(140, 204));
            Sequence a = cache.createSequence(230, spans, ONE_BIT);
            Sequence b = cache.createSequence(70);
            Prompt.random(arena, random, DType.FP16, 230, spans).fillAll(a);
            Prompt.random(arena, random, DType.FP16, 70, List.of()).fill(b, 0);

            int kv = GEOMETRY.kvHeads();
            int d = GEOMETRY.headDim();
            // a: 230 - 192 = 38 text tokens -> capacity 64 per layer; b: 70 tokens -> capacity 128, one layer
            MemoryUsage expectedA = new MemoryUsage(2L * 2 * kv * 64 * d * 2, 2L * 2 * kv * 192 * d / 8,
                    2L * 2 * 4 * kv * d * 4, 2L * 2 * kv * 230 * d * 2);
            MemoryUsage expectedB = new MemoryUsage(2L * kv * 128 * d * 2, 0, 0, 2L * kv * 70 * d * 2);
            assertThat(a.usage()).isEqualTo(expectedA);
            assertThat(b.usage()).isEqualTo(expectedB);
            assertThat(cache.usage()).isEqualTo(expectedA.plus(expectedB));
            assertThat(storage.liveBytes()).isEqualTo(cache.usage().totalBytes());

            // 1-bit visual tokens take 1/16 of fp16: codes of 192 tokens vs their fp16 bytes
            assertThat(expectedA.visualCodeBytes() * 16).isEqualTo(2L * 2 * kv * 192 * d * 2);

            a.close();
            assertThat(a.usage()).isEqualTo(MemoryUsage.ZERO);
            assertThat(cache.usage()).isEqualTo(expectedB);
            b.close();
            assertThat(cache.usage()).isEqualTo(MemoryUsage.ZERO);
            assertThat(storage.liveBytes()).isZero();
            assertThat(cache.openSequences()).isZero();
        }
    }

    @Test
    void appendsGrowTheBlockGeometricallyAndKeepEveryRow() {
        Random random = seed.random();
        HostStorage storage = new HostStorage();
        int appended = 400;
        try (Arena arena = Arena.ofConfined();
                KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.BF16, storage, KvCacheManager.NO_LIMIT);
                Sequence sequence = cache.createSequence(40, List.of(new TokenSpan(10, 30)), ONE_BIT)) {
            Prompt prompt = Prompt.random(arena, random, DType.BF16, 40, sequence.visualSpans());
            prompt.fillAll(sequence);
            MemorySegment newKeys = KvData.normal(arena, random, DType.BF16, appended, 1, GEOMETRY.kvHeads() * 32);
            MemorySegment newValues = KvData.normal(arena, random, DType.BF16, appended, 1, GEOMETRY.kvHeads() * 32);
            long stepBytes = (long) GEOMETRY.kvHeads() * GEOMETRY.headDim() * 2;
            List<Integer> capacities = new ArrayList<>();
            capacities.add(sequence.layer(1).fullCapacity());
            for (int t = 0; t < appended; t++) {
                for (int l = 0; l < GEOMETRY.layers(); l++) {
                    sequence.append(l, newKeys.asSlice(t * stepBytes, stepBytes),
                            newValues.asSlice(t * stepBytes, stepBytes), DType.BF16);
                }
                int capacity = sequence.layer(1).fullCapacity();
                if (capacity != capacities.getLast()) {
                    capacities.add(capacity);
                }
            }
            // 20 text + 400 appended = 420 rows: 64 -> 128 -> 192 -> 320 -> 512, each step at least x1.5
            assertThat(capacities).containsExactly(64, 128, 192, 320, 512);
            LayerKvView view = sequence.layer(1);
            assertThat(view.fullTokens()).isEqualTo(420);
            assertThat(sequence.tokens(1)).isEqualTo(440);
            List<Integer> text = prompt.textPositions();
            for (int h = 0; h < GEOMETRY.kvHeads(); h++) {
                for (int i = 0; i < text.size(); i++) {
                    assertRow(view.fullKeys(), 512, i, prompt.keys[1], 40, text.get(i), DType.BF16, h);
                    assertRow(view.fullValues(), 512, i, prompt.values[1], 40, text.get(i), DType.BF16, h);
                }
                for (int t = 0; t < appended; t++) {
                    // appended step t, head h is row h of the [kvHeads][headDim] step tensor
                    MemorySegment step = newKeys.asSlice(t * stepBytes, stepBytes);
                    assertRow(view.fullKeys(), 512, 20 + t, step, 1, 0, DType.BF16, h);
                    assertRow(view.fullValues(), 512, 20 + t, newValues.asSlice(t * stepBytes, stepBytes), 1, 0,
                            DType.BF16, h);
                }
            }
            assertThat(storage.liveBytes()).isEqualTo(cache.usage().totalBytes());
            assertThat(cache.usage().fullPrecisionBytes()).isEqualTo(2L * 2 * GEOMETRY.kvHeads() * 512 * 32 * 2);
            assertThat(cache.usage().fp16Bytes()).isEqualTo(2L * 2 * GEOMETRY.kvHeads() * 440 * 32 * 2);
        }
        assertThat(storage.liveBytes()).isZero();
    }

    /**
     * Host storage whose blocks, while {@code failFrees} is set, free themselves and then report an error (as a
     * device storage whose free fails after the bytes are gone would).
     */
    private static final class FailingFrees extends HostDelegate {
        private final AtomicBoolean failFrees;

        FailingFrees(HostStorage host, AtomicBoolean failFrees) {
            super(host);
            this.failFrees = failFrees;
        }

        private record Block(StorageBlock inner, AtomicBoolean failFrees) implements StorageBlock {
            @Override
            public String label() {
                return inner.label();
            }

            @Override
            public long byteSize() {
                return inner.byteSize();
            }

            @Override
            public MemorySegment segment() {
                return inner.segment();
            }

            @Override
            public boolean isOpen() {
                return inner.isOpen();
            }

            @Override
            public void close() {
                inner.close();
                if (failFrees.get()) {
                    throw new IllegalStateException("freeing " + label() + " failed");
                }
            }
        }

        @Override
        public StorageBlock allocate(long bytes, String label) {
            return new Block(host.allocate(bytes, label), failFrees);
        }

        @Override
        protected StorageBlock unwrap(StorageBlock block) {
            return ((Block) block).inner();
        }
    }

    @Test
    void aFailedFreeOfTheOutgrownPairIsThrownAfterBothBlocksWereFreedAndTheSwapAccounted() {
        Random random = seed.random();
        HostStorage host = new HostStorage();
        AtomicBoolean failFrees = new AtomicBoolean();
        try (Arena arena = Arena.ofConfined();
                KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, new FailingFrees(host, failFrees),
                        KvCacheManager.NO_LIMIT);
                Sequence sequence = cache.createSequence(1)) {
            Prompt.random(arena, random, DType.FP16, 1, List.of()).fill(sequence, 0);
            MemorySegment step = KvData.normal(arena, random, DType.FP16, 2, 1, 32);
            for (int t = 1; t < 64; t++) {
                sequence.append(0, step, step, DType.FP16); // fills the block of 64
            }
            failFrees.set(true);
            assertThatThrownBy(() -> sequence.append(0, step, step, DType.FP16)) // grows, then frees the old pair
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("full-precision keys failed")
                    .satisfies(e -> assertThat(e.getSuppressed()).singleElement().extracting(Throwable::getMessage)
                            .asString().contains("full-precision values failed"));
            failFrees.set(false);
            assertThat(sequence.layer(0).fullCapacity()).isEqualTo(128);
            assertThat(host.liveBlocks()).isEqualTo(2);
            assertThat(host.liveBytes()).isEqualTo(cache.usage().totalBytes());
        }
        assertThat(host.liveBytes()).isZero();
    }

    @Test
    void aViewTakenBeforeGrowthCannotReadTheFreedBlock() {
        Random random = seed.random();
        try (Arena arena = Arena.ofConfined(); KvCacheManager cache = KvCacheManager.onHost(GEOMETRY, DType.FP16);
                Sequence sequence = cache.createSequence(63)) {
            Prompt.random(arena, random, DType.FP16, 63, List.of()).fill(sequence, 0);
            LayerKvView before = sequence.layer(0);
            assertThat(before.fullCapacity()).isEqualTo(64);
            MemorySegment step = KvData.normal(arena, random, DType.FP16, 2, 1, 32);
            sequence.append(0, step, step, DType.FP16); // fills the block
            sequence.append(0, step, step, DType.FP16); // grows: the old block is freed
            assertThatThrownBy(() -> before.fullKeys().get(Elements.SHORT_LE, 0))
                    .isInstanceOf(IllegalStateException.class);
            assertThat(sequence.layer(0).fullCapacity()).isEqualTo(128);
        }
    }

    @Test
    void aFillOverTheLimitChangesNothing() {
        Random random = seed.random();
        HostStorage storage = new HostStorage();
        int kv = GEOMETRY.kvHeads();
        long layerBytes = 2L * kv * 64 * 32 * 2 + 2L * kv * 100 * 32 / 8 + 4L * kv * 32 * 4;
        try (Arena arena = Arena.ofConfined();
                KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, storage, layerBytes + 100);
                Sequence sequence = cache.createSequence(130, List.of(new TokenSpan(20, 120)), ONE_BIT)) {
            Prompt prompt = Prompt.random(arena, random, DType.FP16, 130, sequence.visualSpans());
            prompt.fill(sequence, 0);
            assertThat(cache.usage().totalBytes()).isEqualTo(layerBytes);
            MemoryUsage before = cache.usage();
            assertThatThrownBy(() -> prompt.fill(sequence, 1)).isInstanceOf(CacheMemoryLimitException.class)
                    .hasMessageContaining("filling layer 1 of " + sequence)
                    .hasMessageContaining("needs " + layerBytes + " bytes")
                    .hasMessageContaining(layerBytes + " of its " + (layerBytes + 100) + "-byte limit");
            assertThat(cache.usage()).isEqualTo(before);
            assertThat(sequence.usage()).isEqualTo(before);
            assertThat(storage.liveBytes()).isEqualTo(layerBytes);
            assertThat(sequence.isFilled(1)).isFalse();
        }
        assertThat(storage.liveBytes()).isZero();
    }

    @Test
    void nearTheLimitTheBlockGrowsByOneTokenThenAppendsStop() {
        Random random = seed.random();
        HostStorage storage = new HostStorage();
        int kv = GEOMETRY.kvHeads();
        long tokenBytes = 2L * kv * 32 * 2; // one token, keys and values, fp16
        long filled = 64 * tokenBytes; // 63 prompt tokens -> capacity 64
        // Growing copies into a new block while the old one lives: room for a 65-token block but not a 128-token one.
        long limit = filled + 65 * tokenBytes;
        try (Arena arena = Arena.ofConfined();
                KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, storage, limit);
                Sequence sequence = cache.createSequence(63)) {
            Prompt.random(arena, random, DType.FP16, 63, List.of()).fill(sequence, 0);
            MemorySegment step = KvData.normal(arena, random, DType.FP16, kv, 1, 32);
            sequence.append(0, step, step, DType.FP16); // 64 of 64
            sequence.append(0, step, step, DType.FP16); // grows by one token: 65 of 65
            assertThat(sequence.layer(0).fullCapacity()).isEqualTo(65);
            assertThat(cache.usage().fullPrecisionBytes()).isEqualTo(65 * tokenBytes);
            MemoryUsage before = cache.usage();
            assertThatThrownBy(() -> sequence.append(0, step, step, DType.FP16))
                    .isInstanceOf(CacheMemoryLimitException.class)
                    .hasMessageContaining("growing layer 0 of " + sequence + " to 66 tokens");
            assertThat(sequence.tokens(0)).isEqualTo(65);
            assertThat(cache.usage()).isEqualTo(before);
            assertThat(storage.liveBytes()).isEqualTo(before.totalBytes());
        }
        assertThat(storage.liveBytes()).isZero();
    }

    @Test
    void aBatchAppendRefusedForOneSequenceGrowsNoLayerOfTheOthers() {
        Random random = seed.random();
        HostStorage storage = new HostStorage();
        int kv = GEOMETRY.kvHeads();
        long tokenBytes = 2L * kv * 32 * 2;
        // two full 64-token layers, and room for one 65-token copy beside them but not two
        long limit = 2 * 64 * tokenBytes + 65 * tokenBytes;
        try (Arena arena = Arena.ofConfined();
                KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, storage, limit);
                Sequence a = cache.createSequence(63);
                Sequence b = cache.createSequence(63)) {
            Prompt.random(arena, random, DType.FP16, 63, List.of()).fill(a, 0);
            Prompt.random(arena, random, DType.FP16, 63, List.of()).fill(b, 0);
            MemorySegment k = KvData.normal(arena, random, DType.FP16, 2 * kv, 1, 32);
            MemorySegment v = KvData.normal(arena, random, DType.FP16, 2 * kv, 1, 32);
            cache.append(0, List.of(a, b), k, v, DType.FP16); // both 64 of 64
            var aBefore = a.layer(0);
            MemorySegment aKeys = copyOf(arena, aBefore.fullKeys());
            MemoryUsage before = cache.usage();

            assertThatThrownBy(() -> cache.append(0, List.of(a, b), k, v, DType.FP16))
                    .isInstanceOf(CacheMemoryLimitException.class)
                    .hasMessageContaining("growing layer 0 of " + b + " to 65 tokens");

            assertThat(a.layer(0).fullCapacity()).isEqualTo(64);
            assertThat(b.layer(0).fullCapacity()).isEqualTo(64);
            assertThat(a.tokens(0)).isEqualTo(64);
            assertThat(b.tokens(0)).isEqualTo(64);
            assertThat(a.layer(0).fullKeys().mismatch(aKeys)).isEqualTo(-1);
            assertThat(cache.usage()).isEqualTo(before);
            assertThat(storage.liveBytes()).isEqualTo(before.totalBytes());

            cache.append(0, List.of(a), k.asSlice(0, k.byteSize() / 2), v.asSlice(0, v.byteSize() / 2),
                    DType.FP16); // alone, a fits: grows by one token
            assertThat(a.layer(0).fullCapacity()).isEqualTo(65);
        }
        assertThat(storage.liveBytes()).isZero();
    }

    private static MemorySegment copyOf(Arena arena, MemorySegment segment) {
        MemorySegment copy = arena.allocate(segment.byteSize());
        copy.copyFrom(segment);
        return copy;
    }

    @Test
    void nonFiniteInputIsRejectedNamingWhereAndStoresNothing() {
        Random random = seed.random();
        HostStorage storage = new HostStorage();
        try (Arena arena = Arena.ofConfined();
                KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, storage, KvCacheManager.NO_LIMIT);
                Sequence sequence = cache.createSequence(40, List.of(new TokenSpan(10, 30)), ONE_BIT)) {
            Prompt prompt = Prompt.random(arena, random, DType.FP16, 40, sequence.visualSpans());
            // NaN in a visual key: head 1, token 17, channel 5
            long nanAt = (1L * 40 + 17) * 32 + 5;
            float saved = Elements.read(prompt.keys[0], DType.FP16, nanAt);
            Elements.write(prompt.keys[0], DType.FP16, nanAt, Float.NaN);
            assertThatThrownBy(() -> prompt.fill(sequence, 0)).isInstanceOf(NonFiniteInputException.class)
                    .hasMessageContaining("layer 0 of " + sequence + " keys")
                    .hasMessageContaining("head 1, token 17, channel 5");
            Elements.write(prompt.keys[0], DType.FP16, nanAt, saved);
            // +Inf in a text value: head 0, token 35, channel 31
            long infAt = 35L * 32 + 31;
            Elements.write(prompt.values[1], DType.FP16, infAt, Float.POSITIVE_INFINITY);
            assertThatThrownBy(() -> prompt.fill(sequence, 1)).isInstanceOf(NonFiniteInputException.class)
                    .hasMessageContaining("values").hasMessageContaining("Infinity")
                    .hasMessageContaining("head 0, token 35, channel 31");
            assertThat(cache.usage()).isEqualTo(MemoryUsage.ZERO);
            assertThat(storage.liveBytes()).isZero();
            assertThat(sequence.isFilled(0)).isFalse();

            prompt.fill(sequence, 0);
            MemoryUsage before = cache.usage();
            MemorySegment step = KvData.normal(arena, random, DType.FP16, 2, 1, 32);
            MemorySegment bad = KvData.normal(arena, random, DType.FP16, 2, 1, 32);
            Elements.write(bad, DType.FP16, 32 + 3, Float.NaN);
            assertThatThrownBy(() -> sequence.append(0, bad, step, DType.FP16))
                    .isInstanceOf(NonFiniteInputException.class).hasMessageContaining("appended key")
                    .hasMessageContaining("head 1, token 40, channel 3");
            assertThat(sequence.tokens(0)).isEqualTo(40);
            assertThat(cache.usage()).isEqualTo(before);
        }
        assertThat(storage.liveBytes()).isZero();
    }

    @Test
    void shapesAndTypesDisagreeingWithTheGeometryAreRejected() {
        Random random = seed.random();
        HostStorage storage = new HostStorage();
        try (Arena arena = Arena.ofConfined();
                KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, storage, KvCacheManager.NO_LIMIT);
                Sequence sequence = cache.createSequence(40)) {
            MemorySegment keys = KvData.normal(arena, random, DType.FP16, 2, 40, 32);
            MemorySegment shortValues = KvData.normal(arena, random, DType.FP16, 2, 39, 32);
            assertThatThrownBy(() -> sequence.fill(0, keys, shortValues, DType.FP16))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("values are 4992 bytes")
                    .hasMessageContaining("[2][40][32] FP16 is 5120 bytes");
            assertThatThrownBy(() -> sequence.fill(0, keys, keys, DType.BF16))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("BF16 but the cache stores FP16");
            assertThatThrownBy(() -> sequence.fill(2, keys, keys, DType.FP16))
                    .isInstanceOf(IndexOutOfBoundsException.class).hasMessageContaining("layer 2")
                    .hasMessageContaining("2 layers");
            MemorySegment step = KvData.normal(arena, random, DType.FP16, 2, 1, 32);
            assertThatThrownBy(() -> sequence.append(0, step, step, DType.FP16))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("not filled yet");
            sequence.fill(0, keys, keys, DType.FP16);
            assertThatThrownBy(() -> sequence.fill(0, keys, keys, DType.FP16))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("already filled");
            MemoryUsage before = cache.usage();
            assertThatThrownBy(() -> sequence.append(0, step.asSlice(0, 126), step, DType.FP16))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("appended key are 126 bytes");
            assertThat(cache.usage()).isEqualTo(before);
            assertThat(sequence.tokens(0)).isEqualTo(40);
        }
        assertThat(storage.liveBytes()).isZero();
    }

    @Test
    void spansAreCheckedWhenTheSequenceIsCreated() {
        try (KvCacheManager cache = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            assertThatThrownBy(() -> new TokenSpan(5, 5)).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("[5, 5) is empty");
            assertThatThrownBy(() -> new TokenSpan(-1, 5)).isInstanceOf(IllegalArgumentException.class);
            assertThatThrownBy(() -> cache.createSequence(50, List.of(new TokenSpan(40, 51)), ONE_BIT))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("[40, 51) runs past")
                    .hasMessageContaining("50 tokens");
            assertThatThrownBy(() -> cache.createSequence(50, List.of(new TokenSpan(20, 30), new TokenSpan(0, 21)),
                    ONE_BIT)).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("[0, 21) and [20, 30) overlap");
            assertThatThrownBy(() -> cache.createSequence(50, List.of(new TokenSpan(0, 10)), null))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("need a quantization config");
            assertThatThrownBy(() -> cache.createSequence(0)).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("at least one prompt token");
            assertThat(cache.openSequences()).isZero();
        }
        try (KvCacheManager narrow = KvCacheManager.onHost(new ModelGeometry(1, 1, 1, 4), DType.FP16)) {
            // 4 channels of 1 bit do not fill a byte
            assertThatThrownBy(() -> narrow.createSequence(8, List.of(new TokenSpan(0, 4)), ONE_BIT))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("headDim 4 with 1 bits");
        }
    }

    @Test
    void geometryIsValidated() {
        assertThatThrownBy(() -> new ModelGeometry(2, 30, 8, 128)).isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("multiple of KV heads");
        assertThatThrownBy(() -> new ModelGeometry(0, 32, 8, 128)).isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("positive");
        assertThat(new ModelGeometry(32, 32, 8, 128).groupSize()).isEqualTo(4);
    }

    @Test
    void aBatchAppendWritesEachSequenceItsOwnRowAsSingleAppendsWould() {
        Random random = seed.random();
        try (Arena arena = Arena.ofConfined();
                KvCacheManager batched = KvCacheManager.onHost(GEOMETRY, DType.FP16);
                KvCacheManager single = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            List<Sequence> a = new ArrayList<>();
            List<Sequence> b = new ArrayList<>();
            for (int i = 0; i < 3; i++) {
                Prompt p = Prompt.random(arena, random, DType.FP16, 20 + 30 * i, List.of(new TokenSpan(2, 12 + i)));
                a.add(batched.createSequence(p.tokens(), p.spans(), ONE_BIT));
                b.add(single.createSequence(p.tokens(), p.spans(), ONE_BIT));
                p.fillAll(a.getLast());
                p.fillAll(b.getLast());
            }
            long item = 2L * GEOMETRY.kvHeads() * GEOMETRY.headDim();
            for (int step = 0; step < 70; step++) { // past the first capacity of every sequence: layers grow
                MemorySegment k = KvData.normal(arena, random, DType.FP16, 3, GEOMETRY.kvHeads(), GEOMETRY.headDim());
                MemorySegment v = KvData.normal(arena, random, DType.FP16, 3, GEOMETRY.kvHeads(), GEOMETRY.headDim());
                batched.append(1, a, k, v, DType.FP16);
                for (int i = 0; i < 3; i++) {
                    b.get(i).append(1, k.asSlice(i * item, item), v.asSlice(i * item, item), DType.FP16);
                }
            }
            for (int i = 0; i < 3; i++) {
                LayerKvView x = a.get(i).layer(1);
                LayerKvView y = b.get(i).layer(1);
                assertThat(x.fullTokens()).isEqualTo(y.fullTokens()).isEqualTo(a.get(i).tokens(1) - (10 + i));
                assertSameBytes(x.fullKeys(), y.fullKeys(), "sequence " + i + " keys");
                assertSameBytes(x.fullValues(), y.fullValues(), "sequence " + i + " values");
                assertThat(a.get(i).usage()).isEqualTo(b.get(i).usage());
            }
            assertThat(batched.usage()).isEqualTo(single.usage());
            a.forEach(Sequence::close);
            b.forEach(Sequence::close);
        }
    }

    @Test
    void aRefusedBatchAppendAppendsNothingAndNamesTheSequence() {
        Random random = seed.random();
        try (Arena arena = Arena.ofConfined(); KvCacheManager cache = KvCacheManager.onHost(GEOMETRY, DType.FP16);
                KvCacheManager other = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Prompt p = Prompt.random(arena, random, DType.FP16, 30, List.of(new TokenSpan(5, 25)));
            Sequence s1 = cache.createSequence(30, p.spans(), ONE_BIT);
            Sequence s2 = cache.createSequence(30, p.spans(), ONE_BIT);
            Sequence unfilled = cache.createSequence(30, p.spans(), ONE_BIT);
            Sequence foreign = other.createSequence(30, p.spans(), ONE_BIT);
            p.fillAll(s1);
            p.fillAll(s2);
            p.fillAll(foreign);
            MemorySegment k = KvData.normal(arena, random, DType.FP16, 2, GEOMETRY.kvHeads(), GEOMETRY.headDim());
            MemorySegment v = KvData.normal(arena, random, DType.FP16, 2, GEOMETRY.kvHeads(), GEOMETRY.headDim());
            MemoryUsage before = cache.usage();
            assertThatThrownBy(() -> cache.append(0, List.of(), k, v, DType.FP16))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("empty batch");
            assertThatThrownBy(() -> cache.append(0, List.of(s1, s1), k, v, DType.FP16))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("twice");
            assertThatThrownBy(() -> cache.append(0, List.of(s1, foreign), k, v, DType.FP16))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("another cache manager");
            assertThatThrownBy(() -> cache.append(0, List.of(s1, unfilled), k, v, DType.FP16))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("not filled");
            assertThatThrownBy(() -> cache.append(0, List.of(s1, s2), k.asSlice(2), v, DType.FP16))
                    .isInstanceOf(InvalidShapeException.class).hasMessageContaining("[2][2][32] FP16");
            assertThatThrownBy(() -> cache.append(0, List.of(s1, s2), k, v, DType.BF16))
                    .isInstanceOf(InvalidShapeException.class);
            MemorySegment nan = arena.allocate(v.byteSize()).copyFrom(v);
            Elements.write(nan, DType.FP16, GEOMETRY.kvHeads() * GEOMETRY.headDim() + 5, Float.NaN); // sequence 2
            assertThatThrownBy(() -> cache.append(0, List.of(s1, s2), k, nan, DType.FP16))
                    .isInstanceOf(NonFiniteInputException.class).hasMessageContaining(s2.toString());
            assertThat(s1.tokens(0)).isEqualTo(30);
            assertThat(s2.tokens(0)).isEqualTo(30);
            assertThat(cache.usage()).isEqualTo(before);
            s1.close();
            assertThatThrownBy(() -> cache.append(0, List.of(s2, s1), k, v, DType.FP16))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("closed");
            assertThat(s2.tokens(0)).isEqualTo(30);
            s2.close();
            unfilled.close();
            foreign.close();
        }
    }

    @Test
    void aReservationIsExactAndAppendingWithinItNeverMovesTheBlock() {
        Random random = seed.random();
        try (Arena arena = Arena.ofConfined(); KvCacheManager cache = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Prompt p = Prompt.random(arena, random, DType.FP16, 50, List.of(new TokenSpan(10, 40)));
            Sequence s = cache.createSequence(50, p.spans(), ONE_BIT, 37);
            assertThat(s.reservedNewTokens()).isEqualTo(37);
            p.fillAll(s);
            LayerKvView first = s.layer(0);
            assertThat(first.fullCapacity()).isEqualTo(20 + 37);
            MemorySegment k = KvData.normal(arena, random, DType.FP16, 1, GEOMETRY.kvHeads(), GEOMETRY.headDim());
            for (int i = 0; i < 37; i++) {
                s.append(0, k, k, DType.FP16);
            }
            assertThat(s.layer(0).fullKeys().address()).isEqualTo(first.fullKeys().address());
            s.append(0, k, k, DType.FP16); // one past the reservation: the layer grows
            assertThat(s.layer(0).fullCapacity()).isGreaterThan(57);
            assertThatThrownBy(() -> cache.createSequence(50, p.spans(), ONE_BIT, -1))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("reservedNewTokens");
            s.close();
        }
    }

    @Test
    void useAfterCloseNamesTheSequence() {
        Random random = seed.random();
        try (Arena arena = Arena.ofConfined(); KvCacheManager cache = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            Sequence sequence = cache.createSequence(10);
            Prompt prompt = Prompt.random(arena, random, DType.FP16, 10, List.of());
            prompt.fill(sequence, 0);
            sequence.close();
            sequence.close(); // idempotent
            assertThat(sequence.isOpen()).isFalse();
            assertThat(sequence.usage()).isEqualTo(MemoryUsage.ZERO);
            String closed = sequence + " is closed";
            assertThatThrownBy(() -> sequence.layer(0)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining(closed);
            assertThatThrownBy(() -> prompt.fill(sequence, 1)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining(closed);
            assertThatThrownBy(() -> sequence.append(0, prompt.keys[0], prompt.keys[0], DType.FP16))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining(closed);
            assertThat(cache.openSequences()).isZero();
        }
    }

    @Test
    void closingTheManagerWithOpenSequencesFreesThemAndReportsEach() {
        Random random = seed.random();
        HostStorage storage = new HostStorage();
        KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, storage, KvCacheManager.NO_LIMIT);
        Sequence closedOne;
        Sequence leakedFilled;
        Sequence leakedEmpty;
        MemoryUsage held;
        try (Arena arena = Arena.ofConfined()) {
            closedOne = cache.createSequence(10);
            leakedFilled = cache.createSequence(30, List.of(new TokenSpan(2, 18)), ONE_BIT);
            leakedEmpty = cache.createSequence(5);
            Prompt.random(arena, random, DType.FP16, 10, List.of()).fillAll(closedOne);
            Prompt.random(arena, random, DType.FP16, 30, leakedFilled.visualSpans()).fillAll(leakedFilled);
            closedOne.close();
            held = leakedFilled.usage();
        }
        assertThatThrownBy(cache::close).isInstanceOfSatisfying(CacheLeakException.class, e -> {
            assertThat(e.leaked()).containsExactly(
                    new CacheLeakException.LeakedSequence(leakedFilled.id(), leakedFilled.toString(), held),
                    new CacheLeakException.LeakedSequence(leakedEmpty.id(), leakedEmpty.toString(), MemoryUsage.ZERO));
            assertThat(e.getMessage()).contains("2 sequence(s) still open")
                    .contains(leakedFilled + ": " + held.totalBytes() + " bytes");
        });
        assertThat(storage.liveBytes()).isZero();
        assertThat(cache.usage()).isEqualTo(MemoryUsage.ZERO);
        cache.close(); // idempotent: reported once
        assertThatThrownBy(() -> leakedFilled.layer(0)).isInstanceOf(IllegalStateException.class)
                .hasMessageContaining(leakedFilled + " was freed when its cache manager closed");
        assertThatThrownBy(() -> cache.createSequence(3)).isInstanceOf(IllegalStateException.class)
                .hasMessageContaining("manager is closed");
        leakedFilled.close(); // harmless after the manager freed it
    }
}
