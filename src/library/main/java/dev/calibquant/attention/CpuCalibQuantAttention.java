package dev.calibquant.attention;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.concurrent.ForkJoinPool;

/**
 * CalibQuant decode attention on the CPU: full-precision tokens as stored, each quantized visual span by
 * post-scaling from its packed codes (never dequantized), its scores calibrated on their own, one fp32 softmax over
 * everything. Work is split into (sequence, KV head) tasks on a fork-join pool.
 */
public final class CpuCalibQuantAttention implements DecodeAttention {
    private final CpuDecodeEngine engine;

    /** Runs on a process-wide fork-join pool with one worker per core. */
    public CpuCalibQuantAttention(Calibration calibration) {
        this(calibration, CpuDecodeEngine.defaultPool());
    }

    public CpuCalibQuantAttention(Calibration calibration, ForkJoinPool pool) {
        this.engine = new CpuDecodeEngine(calibration, pool, true);
    }

    @Override
    public void decode(List<? extends LayerKvView> batch, MemorySegment queries, DType queryType, int queryHeads,
            MemorySegment out) {
        engine.decode(batch, queries, queryType, queryHeads, out);
    }
}
