package dev.calibquant.attention;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.concurrent.ForkJoinPool;

/**
 * Exact decode attention over an unquantized cache (fp16, bf16 or fp32 keys and values), with the same code as
 * {@link CpuCalibQuantAttention} minus the quantized spans: the baseline it is measured against. A cache holding
 * quantized spans is rejected.
 */
public final class CpuExactAttention implements DecodeAttention {
    private final CpuDecodeEngine engine;

    /** Runs on a process-wide fork-join pool with one worker per core. */
    public CpuExactAttention() {
        this(CpuDecodeEngine.defaultPool());
    }

    public CpuExactAttention(ForkJoinPool pool) {
        this.engine = new CpuDecodeEngine(Calibration.OFF, pool, false);
    }

    @Override
    public void decode(List<? extends LayerKvView> batch, MemorySegment queries, DType queryType, int queryHeads,
            MemorySegment out) {
        engine.decode(batch, queries, queryType, queryHeads, out);
    }
}
