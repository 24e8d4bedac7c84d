package dev.calibquant.bench;

import dev.calibquant.profiling.Nvtx;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.Warmup;

/**
 * The cost of one NVTX range (push + pop) as the kernel launch path pays it, off and on. Each parameter runs in its
 * own forked JVM, so the process-wide switch ({@code -Dcalibquant.nvtx}, read once) is set before {@link Nvtx} is
 * first used. "on" without a profiler attached measures the downcalls into {@code libnvtx3interop.so.1}'s no-op
 * stubs; under a profiler the profiler's own handling comes on top.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Fork(1)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
public class NvtxRangeBenchmark {

    @Param({"off", "on"})
    public String nvtx;

    private Nvtx.Name name;

    @Setup(Level.Trial)
    public void setUp() {
        System.setProperty(Nvtx.SWITCH_PROPERTY, nvtx.equals("on") ? "true" : "false");
        if (Nvtx.process().enabled() != nvtx.equals("on")) {
            throw new IllegalStateException("wanted NVTX " + nvtx + ", got: " + Nvtx.process().status());
        }
        name = Nvtx.rangeName("calibquant_decode_b1_d128_mm2");
    }

    /** One range around nothing, the way {@code Kernel.Call.launch} wraps the driver call. */
    @Benchmark
    public void range() {
        try (Nvtx.Range r = Nvtx.range(name)) {
            // the launch would be here
        }
    }

    /** Two nested ranges: a decode step around its kernel. */
    @Benchmark
    public void nestedRanges() {
        try (Nvtx.Range step = Nvtx.range(name); Nvtx.Range kernel = Nvtx.range(name)) {
            // the launch would be here
        }
    }
}
