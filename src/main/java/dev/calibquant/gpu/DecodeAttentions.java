package dev.calibquant.gpu;

import dev.calibquant.attention.CpuCalibQuantAttention;
import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.cuda.Cuda;
import dev.calibquant.cuda.CudaAvailability;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.quant.Calibration;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Chooses where decode attention runs: the GPU when one is usable, otherwise the pure-Java CPU path, saying why
 * once (through {@link System.Logger}), never silently.
 */
public final class DecodeAttentions implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger(DecodeAttentions.class.getName());
    private static final AtomicBoolean REPORTED = new AtomicBoolean();

    private final CudaContext context;
    private final KernelCatalog catalog;
    private final String reason;
    private final java.util.List<GpuViewAttention> made = new java.util.ArrayList<>();

    private DecodeAttentions(CudaContext context, KernelCatalog catalog, String reason) {
        this.context = context;
        this.catalog = catalog;
        this.reason = reason;
    }

    /** The GPU if {@code preferGpu} and one is usable; the CPU otherwise (the reason is logged once). */
    public static DecodeAttentions choose(boolean preferGpu) {
        if (!preferGpu) {
            return new DecodeAttentions(null, null, "the CPU path was asked for");
        }
        CudaAvailability a = Cuda.availability();
        String why = a.reason();
        if (a.available()) {
            CudaContext ctx = Cuda.device(0).openContext();
            try {
                return new DecodeAttentions(ctx, KernelCatalog.open(ctx), null);
            } catch (RuntimeException e) {
                ctx.close();
                why = "the GPU cannot run the shipped kernels: " + e.getMessage();
            }
        }
        if (REPORTED.compareAndSet(false, true)) {
            LOG.log(System.Logger.Level.WARNING, "decode attention runs on the CPU: " + why);
        }
        return new DecodeAttentions(null, null, why);
    }

    public boolean onGpu() {
        return context != null;
    }

    /** Why the CPU path is used, or {@code null} on the GPU. */
    public String cpuReason() {
        return reason;
    }

    /** A decode attention for {@code calibration}; on the GPU it holds device memory until this chooser closes. */
    public DecodeAttention create(Calibration calibration) {
        if (!onGpu()) {
            return new CpuCalibQuantAttention(calibration);
        }
        GpuViewAttention a = new GpuViewAttention(context, catalog, calibration);
        synchronized (made) {
            made.add(a);
        }
        return a;
    }

    /** Frees every GPU attention this chooser made, the kernels and the context. */
    @Override
    public void close() {
        synchronized (made) {
            made.forEach(GpuViewAttention::close);
            made.clear();
        }
        if (catalog != null) {
            catalog.close();
        }
        if (context != null) {
            context.close();
        }
    }
}
