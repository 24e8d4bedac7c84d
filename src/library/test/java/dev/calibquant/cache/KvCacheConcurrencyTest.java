package dev.calibquant.cache;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.Callable;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

/** The thread-safety promised by {@link KvCacheManager}: different sequences in parallel, the limit race-free. */
class KvCacheConcurrencyTest {

    @RegisterExtension
    final RandomSeedExtension seed = new RandomSeedExtension();

    static final ModelGeometry GEOMETRY = new ModelGeometry(2, 8, 2, 32);
    static final int THREADS = 4;

    private static <T> List<T> runTogether(int threads, Callable<T> task) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        try {
            List<Future<T>> futures = new ArrayList<>();
            for (int t = 0; t < threads; t++) {
                futures.add(pool.submit(task));
            }
            List<T> results = new ArrayList<>();
            for (Future<T> f : futures) {
                results.add(f.get(60, TimeUnit.SECONDS));
            }
            return results;
        } finally {
            pool.shutdownNow();
        }
    }

    @Test
    void differentSequencesAreFilledAndGrownFromDifferentThreadsAtOnce() throws Exception {
        HostStorage storage = new HostStorage();
        int prompt = 90;
        int appended = 200;
        List<TokenSpan> spans = List.of(new TokenSpan(8, 72));
        CyclicBarrier start = new CyclicBarrier(THREADS);
        java.util.concurrent.atomic.AtomicInteger next = new java.util.concurrent.atomic.AtomicInteger();
        try (KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, storage, KvCacheManager.NO_LIMIT)) {
            List<Sequence> done = runTogether(THREADS, () -> {
                Random random = new Random(seed.seed() + next.getAndIncrement());
                start.await();
                Sequence sequence = cache.createSequence(prompt, spans, QuantConfig.defaults(1));
                try (Arena arena = Arena.ofConfined()) {
                    MemorySegment[] keys = new MemorySegment[2];
                    for (int l = 0; l < 2; l++) {
                        keys[l] = KvData.normal(arena, random, DType.FP16, 2, prompt, 32);
                        sequence.fill(l, keys[l], KvData.normal(arena, random, DType.FP16, 2, prompt, 32),
                                DType.FP16);
                    }
                    List<MemorySegment> steps = new ArrayList<>();
                    for (int t = 0; t < appended; t++) {
                        MemorySegment step = KvData.normal(arena, random, DType.FP16, 2, 1, 32);
                        steps.add(step);
                        sequence.append(0, step, step, DType.FP16);
                        sequence.append(1, step, step, DType.FP16);
                    }
                    // Each thread sees exactly its own data, whatever the others did meanwhile.
                    LayerKvView view = sequence.layer(0);
                    int text = prompt - 64;
                    for (int h = 0; h < 2; h++) {
                        for (int i = 0; i < 8; i++) {
                            assertThat(KvData.row(view.fullKeys(), DType.FP16, view.fullCapacity(), 32, h, i)
                                    .mismatch(KvData.row(keys[0], DType.FP16, prompt, 32, h, i))).isEqualTo(-1);
                        }
                        for (int t = 0; t < appended; t++) {
                            assertThat(KvData.row(view.fullKeys(), DType.FP16, view.fullCapacity(), 32, h, text + t)
                                    .mismatch(KvData.row(steps.get(t), DType.FP16, 1, 32, h, 0))).isEqualTo(-1);
                        }
                    }
                }
                return sequence;
            });
            MemoryUsage sum = MemoryUsage.ZERO;
            for (Sequence s : done) {
                assertThat(s.tokens(1)).isEqualTo(prompt + appended);
                sum = sum.plus(s.usage());
            }
            assertThat(done.stream().map(Sequence::usage).distinct()).hasSize(1);
            assertThat(cache.usage()).isEqualTo(sum);
            assertThat(storage.liveBytes()).isEqualTo(sum.totalBytes());
            runTogether(THREADS, () -> {
                synchronized (done) {
                    done.removeFirst().close();
                }
                return null;
            });
            assertThat(cache.openSequences()).isZero();
            assertThat(cache.usage()).isEqualTo(MemoryUsage.ZERO);
        }
        assertThat(storage.liveBytes()).isZero();
    }

    @Test
    void racingFillsNeverPassTheLimit() throws Exception {
        HostStorage storage = new HostStorage();
        int prompt = 63; // capacity 64, no spans
        long layerBytes = 2L * GEOMETRY.kvHeads() * 64 * 32 * 2;
        int threads = 8;
        CyclicBarrier start = new CyclicBarrier(threads);
        java.util.concurrent.atomic.AtomicInteger next = new java.util.concurrent.atomic.AtomicInteger();
        try (KvCacheManager cache = new KvCacheManager(GEOMETRY, DType.FP16, storage, 3 * layerBytes + layerBytes / 2)) {
            List<Sequence> filled = runTogether(threads, () -> {
                Random random = new Random(seed.seed() + next.getAndIncrement());
                try (Arena arena = Arena.ofConfined()) {
                    MemorySegment kv = KvData.normal(arena, random, DType.FP16, 2, prompt, 32);
                    Sequence sequence = cache.createSequence(prompt);
                    start.await();
                    try {
                        sequence.fill(0, kv, kv, DType.FP16);
                        return sequence;
                    } catch (CacheMemoryLimitException e) {
                        assertThat(sequence.usage()).isEqualTo(MemoryUsage.ZERO);
                        sequence.close();
                        return null;
                    }
                }
            });
            List<Sequence> winners = filled.stream().filter(java.util.Objects::nonNull).toList();
            assertThat(winners).hasSize(3);
            assertThat(cache.usage().totalBytes()).isEqualTo(3 * layerBytes);
            assertThat(storage.liveBytes()).isEqualTo(3 * layerBytes);
            assertThat(cache.openSequences()).isEqualTo(3);
            winners.forEach(Sequence::close);
        }
        assertThat(storage.liveBytes()).isZero();
    }

    @Test
    void oneSequenceSharedByTwoThreadsStaysConsistent() throws Exception {
        Random random = seed.random();
        try (Arena arena = Arena.ofShared(); KvCacheManager cache = KvCacheManager.onHost(GEOMETRY, DType.FP16);
                Sequence sequence = cache.createSequence(10)) {
            MemorySegment kv = KvData.normal(arena, random, DType.FP16, 2, 10, 32);
            sequence.fill(0, kv, kv, DType.FP16);
            sequence.fill(1, kv, kv, DType.FP16);
            MemorySegment step = KvData.normal(arena, random, DType.FP16, 2, 1, 32);
            java.util.concurrent.atomic.AtomicInteger layer = new java.util.concurrent.atomic.AtomicInteger();
            runTogether(2, () -> {
                int l = layer.getAndIncrement();
                for (int t = 0; t < 500; t++) {
                    sequence.append(l, step, step, DType.FP16);
                    sequence.layer(1 - l).fullTokens(); // reads the other thread's layer meanwhile
                }
                return null;
            });
            assertThat(sequence.tokens(0)).isEqualTo(510);
            assertThat(sequence.tokens(1)).isEqualTo(510);
            assertThat(cache.usage().fp16Bytes()).isEqualTo(2L * 2 * 2 * 510 * 32 * 2);
        }
    }

    /**
     * Batch appends over overlapping sets of sequences, in every order, from several threads at once: the locks are
     * taken in id order, so no two batches deadlock (bounded time), and every row arrives exactly once in its own
     * sequence. Each appended row carries (thread, operation, position) in its first three channels, fp16-exact.
     */
    @Test
    void overlappingBatchAppendsFromManyThreadsNeitherDeadlockNorLoseARow() throws Exception {
        int sequences = 6;
        int operations = 400;
        int kvh = GEOMETRY.kvHeads();
        int d = GEOMETRY.headDim();
        List<TokenSpan> spans = List.of(new TokenSpan(4, 20));
        java.util.concurrent.ConcurrentHashMap<Long, java.util.Set<String>> expected =
                new java.util.concurrent.ConcurrentHashMap<>();
        java.util.concurrent.atomic.AtomicInteger next = new java.util.concurrent.atomic.AtomicInteger();
        try (Arena setup = Arena.ofConfined();
                KvCacheManager cache = KvCacheManager.onHost(GEOMETRY, DType.FP16)) {
            List<Sequence> all = new ArrayList<>();
            for (int i = 0; i < sequences; i++) {
                Sequence s = cache.createSequence(24, spans, QuantConfig.defaults(1));
                for (int l = 0; l < GEOMETRY.layers(); l++) {
                    Random r = new Random(seed.seed() + 100 + i);
                    s.fill(l, KvData.normal(setup, r, DType.FP16, kvh, 24, d),
                            KvData.normal(setup, r, DType.FP16, kvh, 24, d), DType.FP16);
                }
                all.add(s);
                expected.put(s.id(), java.util.concurrent.ConcurrentHashMap.newKeySet());
            }
            CyclicBarrier start = new CyclicBarrier(THREADS);
            runTogether(THREADS, () -> {
                int thread = next.getAndIncrement();
                Random random = new Random(seed.seed() + thread);
                start.await();
                try (Arena arena = Arena.ofConfined()) {
                    for (int op = 0; op < operations; op++) {
                        List<Sequence> batch = new ArrayList<>(all);
                        java.util.Collections.shuffle(batch, random);
                        batch = batch.subList(0, 1 + random.nextInt(sequences));
                        MemorySegment k = arena.allocate(2L * batch.size() * kvh * d);
                        for (int i = 0; i < batch.size(); i++) {
                            for (int h = 0; h < kvh; h++) {
                                long row = (long) (i * kvh + h) * d;
                                dev.calibquant.quant.Elements.write(k, DType.FP16, row, thread);
                                dev.calibquant.quant.Elements.write(k, DType.FP16, row + 1, op);
                                dev.calibquant.quant.Elements.write(k, DType.FP16, row + 2, i);
                            }
                        }
                        int layer = op % GEOMETRY.layers();
                        cache.append(layer, batch, k, k, DType.FP16);
                        for (int i = 0; i < batch.size(); i++) {
                            expected.get(batch.get(i).id()).add(layer + ":" + thread + ":" + op + ":" + i);
                        }
                    }
                }
                return null;
            });
            for (Sequence s : all) {
                java.util.Set<String> found = new java.util.HashSet<>();
                for (int l = 0; l < GEOMETRY.layers(); l++) {
                    LayerKvView v = s.layer(l);
                    for (int r = 24 - 16; r < v.fullTokens(); r++) { // the 8 prompt rows come first
                        for (int h = 0; h < kvh; h++) {
                            long at = (long) (h * v.fullCapacity() + r) * d;
                            String row = l + ":" + (int) dev.calibquant.quant.Elements.read(v.fullKeys(), DType.FP16, at)
                                    + ":" + (int) dev.calibquant.quant.Elements.read(v.fullKeys(), DType.FP16, at + 1)
                                    + ":" + (int) dev.calibquant.quant.Elements.read(v.fullKeys(), DType.FP16, at + 2);
                            if (h == 0) {
                                assertThat(found.add(row)).as("row %s appears once in sequence %d", row, s.id())
                                        .isTrue();
                            }
                        }
                    }
                }
                assertThat(found).as("sequence " + s.id()).isEqualTo(expected.get(s.id()));
                s.close();
            }
        }
    }
}
