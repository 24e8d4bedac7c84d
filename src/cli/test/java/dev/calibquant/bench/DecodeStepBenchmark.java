package dev.calibquant.bench;

import dev.calibquant.attention.CpuCalibQuantAttention;
import dev.calibquant.attention.CpuExactAttention;
import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.attention.TestKvView;
import dev.calibquant.attention.TestKvViews;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;

/**
 * One decode step of one layer on the CPU (BENCHMARKS.md, "pure-Java CPU path"): the 1-bit CalibQuant path against
 * the same engine's exact attention over the unquantized fp16 cache. InternVL2.5-8B head geometry (32 query heads,
 * 8 KV heads, D = 128) and one image's segments per sequence (41 prefix + 3328 visual + 64 text tokens), with the
 * batch scaled down to fit a small machine, on all cores and on one.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
public class DecodeStepBenchmark {
    static final int QUERY_HEADS = 32;
    static final int KV_HEADS = 8;
    static final int HEAD_DIM = 128;
    static final int PREFIX = 41;
    static final int VISUAL = 3328;
    static final int TEXT = 64;

    @Param({"4"})
    public int batch;

    /** Worker threads: "all" uses the attention classes' default pool (one per core), "1" a one-thread pool. */
    @Param({"all", "1"})
    public String threads;

    private ForkJoinPool onePool;

    private Arena arena;
    private List<TestKvView> quantized;
    private List<TestKvView> full;
    private MemorySegment queries;
    private MemorySegment out;
    private DecodeAttention calibQuant;
    private DecodeAttention exact;

    @Setup(Level.Trial)
    public void setUp() {
        arena = Arena.ofShared();
        Random random = new Random(20261128L);
        QuantConfig config = QuantConfig.defaults(1);
        quantized = new ArrayList<>();
        full = new ArrayList<>();
        int fullTokens = PREFIX + TEXT;
        int allTokens = PREFIX + VISUAL + TEXT;
        for (int b = 0; b < batch; b++) {
            // the quantized cache: prefix and text in fp16 (room for 64 generated tokens), the image at 1 bit
            quantized.add(TestKvViews.random(arena, random, DType.FP16, KV_HEADS, HEAD_DIM, fullTokens,
                    fullTokens + 64, new int[] {VISUAL}, config));
            // the baseline: every token in fp16
            full.add(TestKvViews.random(arena, random, DType.FP16, KV_HEADS, HEAD_DIM, allTokens, allTokens + 64,
                    new int[0], config));
        }
        queries = TestKvViews.queries(arena, random, DType.FP16, batch, QUERY_HEADS, HEAD_DIM);
        out = arena.allocate(4L * batch * QUERY_HEADS * HEAD_DIM, 64);
        if (threads.equals("1")) {
            onePool = new ForkJoinPool(1);
            calibQuant = new CpuCalibQuantAttention(config.calibration(), onePool);
            exact = new CpuExactAttention(onePool);
        } else {
            calibQuant = new CpuCalibQuantAttention(config.calibration());
            exact = new CpuExactAttention();
        }
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        if (onePool != null) {
            onePool.close();
        }
        arena.close();
    }

    @Benchmark
    public MemorySegment calibQuant1Bit() {
        calibQuant.decode(quantized, queries, DType.FP16, QUERY_HEADS, out);
        return out;
    }

    @Benchmark
    public MemorySegment exactFp16() {
        exact.decode(full, queries, DType.FP16, QUERY_HEADS, out);
        return out;
    }
}
