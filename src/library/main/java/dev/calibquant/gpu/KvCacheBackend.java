package dev.calibquant.gpu;

import dev.calibquant.attention.CpuCalibQuantAttention;
import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cuda.Cuda;
import dev.calibquant.cuda.CudaAvailability;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Where a KV cache lives and its decode attention runs: on the GPU when one is usable and the shipped kernels take
 * the model's shape ({@link DeviceKvCache}), otherwise in host memory with the pure-Java CPU attention, saying why
 * ({@link #cpuReason()}, and once through {@link System.Logger}), never silently.
 *
 * <p>On the GPU, {@link #attention} decodes what the kernels take on the GPU; a batch they do not (8-bit or
 * per-token spans) is decoded by the CPU attention on a downloaded copy of its layers, and that is logged once.
 * Owns everything it opened: close it last.
 */
public final class KvCacheBackend implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger(KvCacheBackend.class.getName());
    private static final AtomicBoolean REPORTED_CPU = new AtomicBoolean();
    private static final AtomicBoolean REPORTED_FALLBACK = new AtomicBoolean();

    private final CudaContext context;
    private final DeviceKvCache device;
    private final KvCacheManager manager;
    private final String cpuReason;
    private final Map<Calibration, DecodeAttention> attentions = new LinkedHashMap<>();

    private KvCacheBackend(CudaContext context, DeviceKvCache device, KvCacheManager manager, String cpuReason) {
        this.context = context;
        this.device = device;
        this.manager = manager;
        this.cpuReason = cpuReason;
    }

    /**
     * A cache for {@code geometry} (fp16) of at most {@code byteLimit} bytes: on device 0 if {@code preferGpu} and it
     * can be used for this geometry, in host memory otherwise.
     */
    public static KvCacheBackend choose(boolean preferGpu, ModelGeometry geometry, long byteLimit) {
        Objects.requireNonNull(geometry, "geometry");
        String why;
        if (!preferGpu) {
            why = "the CPU path was asked for";
        } else {
            CudaAvailability a = Cuda.availability();
            Optional<String> unsupported = DeviceKvCache.unsupportedReason(geometry, DType.FP16);
            why = !a.available() ? a.reason() : unsupported.orElse(null);
            if (why == null) {
                CudaContext ctx = Cuda.device(0).openContext();
                try {
                    DeviceKvCache cache = DeviceKvCache.open(ctx, geometry, byteLimit);
                    return new KvCacheBackend(ctx, cache, cache.manager(), null);
                } catch (RuntimeException e) {
                    try {
                        ctx.close();
                    } catch (RuntimeException suppressed) {
                        e.addSuppressed(suppressed);
                    }
                    why = "the GPU cannot run the shipped kernels: " + e.getMessage();
                }
            }
            if (REPORTED_CPU.compareAndSet(false, true)) {
                LOG.log(System.Logger.Level.WARNING, "the KV cache and decode attention run on the CPU: " + why);
            }
        }
        return new KvCacheBackend(null, null, KvCacheManager.onHost(geometry, DType.FP16, byteLimit), why);
    }

    public boolean onGpu() {
        return device != null;
    }

    /** Why the CPU path is used, or {@code null} on the GPU. */
    public String cpuReason() {
        return cpuReason;
    }

    /** The cache's sequences (in device memory on the GPU). */
    public KvCacheManager manager() {
        return manager;
    }

    /** The device cache, when on the GPU. */
    public Optional<DeviceKvCache> deviceCache() {
        return Optional.ofNullable(device);
    }

    /** The decode attention for {@code calibration} over this backend's cache; owned by the backend. */
    public synchronized DecodeAttention attention(Calibration calibration) {
        Objects.requireNonNull(calibration, "calibration");
        return attentions.computeIfAbsent(calibration, c -> device == null ? new CpuCalibQuantAttention(c)
                : new GpuWhereSupported(device, c));
    }

    /** Closes the cache (freeing every sequence, reported if still open) and the GPU context it opened. */
    @Override
    public void close() {
        Closer closer = new Closer();
        closer.close(device != null ? device : manager);
        closer.close(context);
        closer.rethrow();
    }

    /** The device attention where the kernels take the batch; the CPU attention on a downloaded copy elsewhere. */
    private static final class GpuWhereSupported implements DecodeAttention {
        private final DeviceKvCache cache;
        private final DeviceDecodeAttention gpu;
        private final CpuCalibQuantAttention cpu;

        GpuWhereSupported(DeviceKvCache cache, Calibration calibration) {
            this.cache = cache;
            this.gpu = cache.attention(calibration);
            this.cpu = new CpuCalibQuantAttention(calibration);
        }

        @Override
        public void decode(List<? extends LayerKvView> batch, MemorySegment queries, DType queryType, int queryHeads,
                MemorySegment out) {
            String why = unsupportedSpans(batch);
            if (why == null) {
                gpu.decode(batch, queries, queryType, queryHeads, out);
                return;
            }
            if (REPORTED_FALLBACK.compareAndSet(false, true)) {
                LOG.log(System.Logger.Level.WARNING, "decode attention runs on the CPU for spans the kernels do not take (" + why + ")"
                        + " (a copy of the layer is downloaded every step)");
            }
            try (Arena arena = Arena.ofConfined()) {
                List<LayerKvView> host = new ArrayList<>(batch.size());
                for (LayerKvView v : batch) {
                    host.add(cache.storage().download(v, arena));
                }
                cpu.decode(host, queries, queryType, queryHeads, out);
            }
        }

        private static String unsupportedSpans(List<? extends LayerKvView> batch) {
            for (LayerKvView v : batch) {
                for (QuantizedSpan q : v.visualSpans()) {
                    java.util.Optional<String> why = DeviceKvCache.unsupportedSpans(q.bits(), q.valueBits(),
                            q.keyGranularity(), q.valueGranularity(), q.paramType(),
                            q.wideKeys() == null ? 0 : q.wideKeys().channels());
                    if (why.isPresent()) {
                        return why.get();
                    }
                }
            }
            return null;
        }
    }
}
