package dev.calibquant.cache;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.NonFiniteInputException;
import dev.calibquant.quant.QuantConfig;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Random;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.Combinators;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;
import net.jqwik.api.state.Action;
import net.jqwik.api.state.ActionChain;
import net.jqwik.api.state.Transformer;
import net.jqwik.api.statistics.Statistics;

/**
 * Random create / fill / append / free / close-the-manager runs against a model of the cache that predicts, from
 * the documented layout and growth policy alone, every byte count, every capacity and which calls must fail (byte
 * limit, double fill, NaN input, bad spans). After every step the cache's accounting, its storage's live bytes and
 * the model must agree; every run ends with zero live bytes. jqwik prints the seed and the shrunk steps on failure.
 */
class KvCacheStateProperties {

    static final ModelGeometry GEOMETRY = new ModelGeometry(2, 4, 2, 16);
    static final QuantConfig ONE_BIT = QuantConfig.defaults(1);
    static final int KV = GEOMETRY.kvHeads();
    static final int D = GEOMETRY.headDim();
    /** Bytes of one token of one layer, keys and values, fp16. */
    static final long TOKEN_BYTES = 2L * KV * D * 2;

    /** The model's view of one open sequence. */
    static final class ModelSequence {
        final Sequence handle;
        final int promptTokens;
        final int visualTokens;
        final int spans;
        final int[] fullTokens = new int[GEOMETRY.layers()]; // -1: not filled
        final int[] capacity = new int[GEOMETRY.layers()];

        ModelSequence(Sequence handle, int promptTokens, List<TokenSpan> spans) {
            this.handle = handle;
            this.promptTokens = promptTokens;
            this.visualTokens = spans.stream().mapToInt(TokenSpan::length).sum();
            this.spans = spans.size();
            java.util.Arrays.fill(fullTokens, -1);
        }

        MemoryUsage expected() {
            MemoryUsage usage = MemoryUsage.ZERO;
            for (int l = 0; l < fullTokens.length; l++) {
                if (fullTokens[l] >= 0) {
                    usage = usage.plus(new MemoryUsage(capacity[l] * TOKEN_BYTES, 2L * KV * visualTokens * D / 8,
                            spans * 4L * KV * D * 4, (fullTokens[l] + visualTokens) * TOKEN_BYTES));
                }
            }
            return usage;
        }
    }

    /** The cache under test and its model. */
    static final class World {
        final long limit;
        final HostStorage storage = new HostStorage();
        final KvCacheManager cache;
        final List<ModelSequence> open = new ArrayList<>();
        final List<Sequence> freed = new ArrayList<>();
        boolean closed;

        World(long limit) {
            this.limit = limit;
            this.cache = new KvCacheManager(GEOMETRY, DType.FP16, storage, limit);
        }

        MemoryUsage expected() {
            MemoryUsage total = MemoryUsage.ZERO;
            for (ModelSequence s : open) {
                total = total.plus(s.expected());
            }
            return total;
        }

        long live() {
            return expected().totalBytes();
        }

        void checkAccounting() {
            MemoryUsage expected = expected();
            assertThat(cache.usage()).isEqualTo(expected);
            assertThat(storage.liveBytes()).isEqualTo(expected.totalBytes());
            assertThat(expected.totalBytes()).isLessThanOrEqualTo(limit);
            if (!closed) {
                assertThat(cache.openSequences()).isEqualTo(open.size());
                for (ModelSequence s : open) {
                    assertThat(s.handle.usage()).isEqualTo(s.expected());
                    for (int l = 0; l < GEOMETRY.layers(); l++) {
                        if (s.fullTokens[l] >= 0) {
                            LayerKvView view = s.handle.layer(l);
                            assertThat(view.fullTokens()).isEqualTo(s.fullTokens[l]);
                            assertThat(view.fullCapacity()).isEqualTo(s.capacity[l]);
                            assertThat(view.visualSpans()).hasSize(s.spans);
                        }
                    }
                }
            }
        }

        @Override
        public String toString() {
            return "cache with limit " + limit + ", " + open.size() + " open sequences";
        }
    }

    @Property(tries = 300)
    void accountingFollowsTheModelAndEndsAtZero(@ForAll("chains") ActionChain<World> chain) {
        World world = chain.withInvariant("accounting", World::checkAccounting).run();
        if (!world.closed) {
            closeAndCheck(world);
        }
        assertThat(world.storage.liveBytes()).isZero();
        assertThat(world.cache.usage()).isEqualTo(MemoryUsage.ZERO);
        // The runs must reach every outcome the model predicts, or the property proves less than it claims.
        Statistics.label("outcomes").coverage(check -> {
            for (String outcome : List.of("filled", "fill over limit", "fill twice", "fill NaN", "appended",
                    "grown", "grown by one", "append over limit", "append unfilled", "leak reported")) {
                check.check(outcome).count(c -> c > 0);
            }
        });
    }

    static void outcome(String what) {
        Statistics.label("outcomes").collect(what);
    }

    @Provide
    Arbitrary<ActionChain<World>> chains() {
        return Arbitraries.of(KvCacheManager.NO_LIMIT, 20_000L, 50_000L).flatMap(limit ->
                ActionChain.<World>startWith(() -> new World(limit))
                        .withAction(3, new Create())
                        .withAction(4, new Fill())
                        .withAction(4, new Append())
                        .withAction(2, new Free())
                        .withAction(1, new CloseManager())
                        .withAction(1, new UseAfterClose())
                        .withMaxTransformations(40));
    }

    static void closeAndCheck(World world) {
        List<CacheLeakException.LeakedSequence> expectedLeaks = new ArrayList<>();
        for (ModelSequence s : world.open) {
            expectedLeaks.add(new CacheLeakException.LeakedSequence(s.handle.id(), s.handle.toString(), s.expected()));
        }
        if (expectedLeaks.isEmpty()) {
            world.cache.close();
        } else {
            assertThatThrownBy(world.cache::close).isInstanceOfSatisfying(CacheLeakException.class,
                    e -> assertThat(e.leaked()).containsExactlyElementsOf(expectedLeaks));
            outcome("leak reported");
        }
        for (ModelSequence s : world.open) {
            world.freed.add(s.handle);
        }
        world.open.clear();
        world.closed = true;
    }

    static final class Create implements Action.Independent<World> {
        @Override
        public boolean precondition(World world) {
            return !world.closed;
        }

        @Override
        public Arbitrary<Transformer<World>> transformer() {
            Arbitrary<Integer> tokens = Arbitraries.integers().between(1, 160);
            Arbitrary<List<Integer>> cuts = Arbitraries.integers().between(0, 1000).list().ofMaxSize(6);
            Arbitrary<Boolean> outOfRange = Arbitraries.integers().between(0, 9).map(i -> i == 0);
            return Combinators.combine(tokens, cuts, outOfRange).as((t, c, bad) -> Transformer.mutate(
                    "create " + t + " tokens, cuts " + c + (bad ? ", a span out of range" : ""), world -> {
                        List<TokenSpan> spans = spans(t, c);
                        if (bad) {
                            List<TokenSpan> withBad = new ArrayList<>(spans);
                            withBad.add(new TokenSpan(t, t + 3));
                            assertThatThrownBy(() -> world.cache.createSequence(t, withBad, ONE_BIT))
                                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("runs past");
                            return;
                        }
                        Sequence handle = world.cache.createSequence(t, spans, ONE_BIT);
                        world.open.add(new ModelSequence(handle, t, TokenSpan.sortedWithin(spans, t)));
                    }));
        }

        /** Non-overlapping spans from cut points (scaled into the prompt), in shuffled order. */
        static List<TokenSpan> spans(int tokens, List<Integer> cuts) {
            List<Integer> points = new ArrayList<>();
            for (int c : cuts) {
                points.add(c * tokens / 1000);
            }
            Collections.sort(points);
            List<TokenSpan> spans = new ArrayList<>();
            for (int i = 0; i + 1 < points.size(); i += 2) {
                if (points.get(i + 1) > points.get(i)) {
                    spans.add(new TokenSpan(points.get(i), points.get(i + 1)));
                }
            }
            Collections.reverse(spans);
            return spans;
        }
    }

    static final class Fill implements Action.Dependent<World> {
        @Override
        public boolean precondition(World world) {
            return !world.closed && !world.open.isEmpty();
        }

        @Override
        public Arbitrary<Transformer<World>> transformer(World state) {
            Arbitrary<Integer> which = Arbitraries.integers().between(0, state.open.size() - 1);
            Arbitrary<Integer> layer = Arbitraries.integers().between(0, GEOMETRY.layers() - 1);
            Arbitrary<Long> dataSeed = Arbitraries.longs();
            Arbitrary<Boolean> nan = Arbitraries.integers().between(0, 7).map(i -> i == 0);
            return Combinators.combine(which, layer, dataSeed, nan).as((w, l, ds, bad) -> Transformer.mutate(
                    "fill sequence #" + w + " layer " + l + (bad ? " with a NaN" : ""), world -> {
                        ModelSequence s = world.open.get(w);
                        try (Arena arena = Arena.ofConfined()) {
                            Random random = new Random(ds);
                            MemorySegment keys = KvData.normal(arena, random, DType.FP16, KV, s.promptTokens, D);
                            MemorySegment values = KvData.normal(arena, random, DType.FP16, KV, s.promptTokens, D);
                            if (bad) {
                                Elements.write(values, DType.FP16, random.nextInt(KV * s.promptTokens * D),
                                        Float.NaN);
                            }
                            int full = s.promptTokens - s.visualTokens;
                            int capacity = CapacityPolicy.initial(full);
                            long needed = capacity * TOKEN_BYTES + 2L * KV * s.visualTokens * D / 8
                                    + s.spans * 4L * KV * D * 4;
                            if (s.fullTokens[l] >= 0) {
                                assertThatThrownBy(() -> s.handle.fill(l, keys, values, DType.FP16))
                                        .isInstanceOf(IllegalStateException.class)
                                        .hasMessageContaining("already filled");
                                outcome("fill twice");
                            } else if (bad) {
                                assertThatThrownBy(() -> s.handle.fill(l, keys, values, DType.FP16))
                                        .isInstanceOf(NonFiniteInputException.class);
                                outcome("fill NaN");
                            } else if (world.live() + needed > world.limit) {
                                assertThatThrownBy(() -> s.handle.fill(l, keys, values, DType.FP16))
                                        .isInstanceOf(CacheMemoryLimitException.class);
                                outcome("fill over limit");
                            } else {
                                s.handle.fill(l, keys, values, DType.FP16);
                                s.fullTokens[l] = full;
                                s.capacity[l] = capacity;
                                outcome("filled");
                            }
                        }
                    }));
        }
    }

    static final class Append implements Action.Dependent<World> {
        @Override
        public boolean precondition(World world) {
            return !world.closed && !world.open.isEmpty();
        }

        @Override
        public Arbitrary<Transformer<World>> transformer(World state) {
            Arbitrary<Integer> which = Arbitraries.integers().between(0, state.open.size() - 1);
            Arbitrary<Integer> layer = Arbitraries.integers().between(0, GEOMETRY.layers() - 1);
            Arbitrary<Integer> count = Arbitraries.integers().between(1, 90);
            Arbitrary<Long> dataSeed = Arbitraries.longs();
            return Combinators.combine(which, layer, count, dataSeed).as((w, l, n, ds) -> Transformer.mutate(
                    "append " + n + " tokens to sequence #" + w + " layer " + l, world -> {
                        ModelSequence s = world.open.get(w);
                        try (Arena arena = Arena.ofConfined()) {
                            Random random = new Random(ds);
                            for (int i = 0; i < n; i++) {
                                MemorySegment key = KvData.normal(arena, random, DType.FP16, KV, 1, D);
                                MemorySegment value = KvData.normal(arena, random, DType.FP16, KV, 1, D);
                                if (!appendOne(world, s, l, key, value)) {
                                    return;
                                }
                            }
                        }
                    }));
        }

        /** One append, predicted by the model; false when it was (rightly) refused. */
        static boolean appendOne(World world, ModelSequence s, int layer, MemorySegment key, MemorySegment value) {
            if (s.fullTokens[layer] < 0) {
                assertThatThrownBy(() -> s.handle.append(layer, key, value, DType.FP16))
                        .isInstanceOf(IllegalStateException.class).hasMessageContaining("not filled yet");
                outcome("append unfilled");
                return false;
            }
            if (s.fullTokens[layer] == s.capacity[layer]) {
                int next = CapacityPolicy.next(s.capacity[layer]);
                if (world.live() + next * TOKEN_BYTES > world.limit) {
                    next = s.capacity[layer] + 1;
                    outcome("grown by one");
                } else {
                    outcome("grown");
                }
                if (world.live() + next * TOKEN_BYTES > world.limit) {
                    assertThatThrownBy(() -> s.handle.append(layer, key, value, DType.FP16))
                            .isInstanceOf(CacheMemoryLimitException.class);
                    outcome("append over limit");
                    return false;
                }
                s.capacity[layer] = next;
            }
            s.handle.append(layer, key, value, DType.FP16);
            s.fullTokens[layer]++;
            outcome("appended");
            return true;
        }
    }

    static final class Free implements Action.Dependent<World> {
        @Override
        public boolean precondition(World world) {
            return !world.closed && !world.open.isEmpty();
        }

        @Override
        public Arbitrary<Transformer<World>> transformer(World state) {
            return Arbitraries.integers().between(0, state.open.size() - 1).map(w -> Transformer.mutate(
                    "free sequence #" + w, world -> {
                        ModelSequence s = world.open.remove((int) w);
                        s.handle.close();
                        world.freed.add(s.handle);
                        assertThat(s.handle.usage()).isEqualTo(MemoryUsage.ZERO);
                    }));
        }
    }

    static final class CloseManager implements Action.Independent<World> {
        @Override
        public boolean precondition(World world) {
            return !world.closed;
        }

        @Override
        public Arbitrary<Transformer<World>> transformer() {
            return Arbitraries.just(Transformer.mutate("close the manager", KvCacheStateProperties::closeAndCheck));
        }
    }

    /** Every freed sequence, and a closed manager, refuse further use and change nothing. */
    static final class UseAfterClose implements Action.Independent<World> {
        @Override
        public boolean precondition(World world) {
            return world.closed || !world.freed.isEmpty();
        }

        @Override
        public Arbitrary<Transformer<World>> transformer() {
            return Arbitraries.just(Transformer.mutate("use freed sequences", world -> {
                for (Sequence s : world.freed) {
                    assertThatThrownBy(() -> s.layer(0)).isInstanceOf(IllegalStateException.class)
                            .hasMessageContaining(s.toString());
                    assertThatThrownBy(() -> s.append(0, MemorySegment.NULL, MemorySegment.NULL, DType.FP16))
                            .isInstanceOf(IllegalStateException.class);
                }
                if (world.closed) {
                    assertThatThrownBy(() -> world.cache.createSequence(4))
                            .isInstanceOf(IllegalStateException.class);
                }
            }));
        }
    }
}
