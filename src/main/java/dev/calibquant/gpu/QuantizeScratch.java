package dev.calibquant.gpu;

import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.CudaStream;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.kernels.CalibQuantKernels;
import dev.calibquant.kernels.QuantizePlan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * One {@link QuantizePlan}'s tables and scratch in device memory, for launching it more than once on buffers the
 * caller owns (checks, benchmarks). {@link GpuKvCache} keeps its own in its staging buffers instead.
 */
final class QuantizeScratch implements AutoCloseable {
    private final QuantizePlan plan;
    private final DeviceBuffer tables;
    private final DeviceBuffer stats;
    private final DeviceBuffer thresholds;
    private final DeviceBuffer sync;

    QuantizeScratch(CudaContext ctx, QuantizePlan plan) {
        this.plan = plan;
        DeviceBuffer t = null;
        DeviceBuffer st = null;
        DeviceBuffer th = null;
        try (Arena arena = Arena.ofConfined()) {
            t = ctx.allocate(plan.tableBytes());
            st = ctx.allocate(plan.statsBytes());
            th = ctx.allocate(plan.thresholdBytes());
            this.sync = ctx.allocate(plan.syncBytes());
            MemorySegment host = arena.allocate(plan.tableBytes(), 16);
            plan.writeTables(host);
            t.copyFrom(host);
        } catch (RuntimeException e) {
            for (DeviceBuffer b : new DeviceBuffer[] {t, st, th}) {
                if (b != null) {
                    b.close();
                }
            }
            throw e;
        }
        this.tables = t;
        this.stats = st;
        this.thresholds = th;
    }

    QuantizePlan plan() {
        return plan;
    }

    /** Quantizes the plan's spans of {@code kin}/{@code vin} into the code and scale buffers, on {@code stream}. */
    void launch(CalibQuantKernels kernels, DeviceBuffer kin, DeviceBuffer vin, DeviceBuffer kcode, DeviceBuffer vcode,
            DeviceBuffer ksig, DeviceBuffer kalp, DeviceBuffer vsig, DeviceBuffer valp, float clipK, float clipV,
            CudaStream stream) {
        kernels.quantizePack(plan, kin, vin, kcode, vcode, ksig, kalp, vsig, valp, tables, 0, stats, thresholds, sync,
                clipK, clipV, stream);
    }

    @Override
    public void close() {
        tables.close();
        stats.close();
        thresholds.close();
        sync.close();
    }
}
