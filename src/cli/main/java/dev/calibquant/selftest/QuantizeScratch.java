package dev.calibquant.selftest;


import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.CudaStream;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.kernels.CalibQuantKernels;
import dev.calibquant.kernels.CalibQuantKernels.CachePointers;
import dev.calibquant.kernels.QuantizePlan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * One {@link QuantizePlan}'s tables and scratch in device memory, for launching it more than once on buffers the
 * caller owns (checks, benchmarks). The device cache keeps its own in its scratch buffers instead.
 */
public final class QuantizeScratch implements AutoCloseable {
    private final QuantizePlan plan;
    private final DeviceBuffer tables;
    private final DeviceBuffer scratch;

    public QuantizeScratch(CudaContext ctx, QuantizePlan plan) {
        this.plan = plan;
        DeviceBuffer[] owned = new DeviceBuffer[2];
        try (Arena arena = Arena.ofConfined()) {
            owned[0] = ctx.allocate(plan.tableBytes());
            owned[1] = ctx.allocate(plan.scratchBytes());
            MemorySegment host = arena.allocate(plan.tableBytes(), 16);
            plan.writeTables(host);
            owned[0].copyFrom(host);
        } catch (RuntimeException | Error e) {
            for (DeviceBuffer b : owned) { // nothing half-made outlives a failed constructor
                if (b != null) {
                    b.close();
                }
            }
            throw e;
        }
        this.tables = owned[0];
        this.scratch = owned[1];
    }

    public QuantizePlan plan() {
        return plan;
    }

    /** Quantizes the plan's spans of {@code kin}/{@code vin} into the code and scale buffers, on {@code stream}. */
    public void launch(CalibQuantKernels kernels, DeviceBuffer kin, DeviceBuffer vin, CachePointers out, float clipK,
            float clipV, CudaStream stream) {
        kernels.quantizePack(plan, kin, vin, out, tables, 0, scratch, clipK, clipV, stream);
    }

    @Override
    public void close() {
        tables.close();
        scratch.close();
    }
}
