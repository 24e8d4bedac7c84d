package dev.calibquant.gpu;

import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Granularity;
import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;

/**
 * A KV cache in GPU memory and the decode attention over it: the one owner a service opens, holds and closes.
 *
 * <p><b>What it owns.</b> The kernels (loaded from the jar when it opens), the device memory (reserved when it opens:
 * {@link #deviceBytes()}), the {@link KvCacheManager} whose sequences live there ({@link #manager()}), and one
 * {@link DeviceDecodeAttention} per calibration ({@link #attention}). Closing it closes them all, in that reverse
 * order; sequences still open are freed and reported by the manager ({@link dev.calibquant.cache.CacheLeakException}).
 * The {@link CudaContext} stays the caller's: close the cache first.
 *
 * <p><b>What each call moves.</b> {@link Sequence#fill} uploads the layer's prompt keys and values once, copies the
 * full-precision rows on the device and quantizes the visual spans there ({@code quantize_pack}, one launch);
 * {@link KvCacheManager#append} uploads a batch's new keys and values (and a small table) in one copy and writes them
 * in one launch; a decode step uploads the queries and its index tables in one copy and downloads the output in one
 * (see {@link DeviceDecodeAttention}). Nothing else crosses the bus; {@link #download} copies a layer back on request.
 *
 * <p><b>Threads.</b> Thread-safe, as {@link KvCacheManager} is. Device work is queued on one stream, under one lock,
 * so work from several threads is serialized; different sequences may be filled, appended and decoded from different
 * threads.
 */
public final class DeviceKvCache implements AutoCloseable {

    /** Head dims the shipped kernels are compiled for. */
    private static final List<Integer> HEAD_DIMS = List.of(64, 128);

    /** Whether the shipped kernels are compiled for head dim {@code d}. */
    static boolean kernelsTakeHeadDim(int d) {
        return HEAD_DIMS.contains(d);
    }
    /** Query heads per KV head the shipped decode kernels take at most. */
    static final int MAX_GROUP = 8;

    /** Which kernel image to load: the default picks the best target for the device and its cubin where one ships. */
    public record KernelChoice(String target, boolean fromPtx) {
        /** The best target for the device, its cubin where one ships ({@code -Dcalibquant.kernels.image=ptx}: PTX). */
        public static KernelChoice forDevice() {
            return new KernelChoice(null, KernelCatalog.Image.fromSystemProperty() == KernelCatalog.Image.PTX);
        }

        /** An explicit target ({@code sm_90a}, {@code sm_80}), from its PTX (driver JIT) or its cubin where one ships. */
        public static KernelChoice of(String target, boolean fromPtx) {
            return new KernelChoice(Objects.requireNonNull(target, "target"), fromPtx);
        }
    }

    private final KernelCatalog kernels;
    private final DeviceStorage storage;
    private final KvCacheManager manager;
    private final Map<Calibration, DeviceDecodeAttention> attentions = new LinkedHashMap<>();
    private boolean closed;

    private DeviceKvCache(KernelCatalog kernels, DeviceStorage storage, KvCacheManager manager) {
        this.kernels = kernels;
        this.storage = storage;
        this.manager = manager;
    }

    /**
     * Why the GPU path cannot hold and decode a cache of this shape, or empty when it can: the kernels read fp16
     * caches of head dim 64 or 128 with up to {@value #MAX_GROUP} query heads per KV head. Visual spans must be
     * quantized per channel at 1, 2 or 4 bits to decode on the GPU; other configs are stored (quantized on the CPU)
     * but decoded on the CPU from a {@link #download}.
     */
    public static Optional<String> unsupportedReason(ModelGeometry geometry, DType dtype) {
        Objects.requireNonNull(geometry, "geometry");
        if (dtype != DType.FP16) {
            return Optional.of("the GPU kernels read fp16 caches, not " + dtype);
        }
        if (!kernelsTakeHeadDim(geometry.headDim())) {
            return Optional.of("the GPU kernels are compiled for head dim 64 and 128, not " + geometry.headDim());
        }
        if (geometry.groupSize() > MAX_GROUP) {
            return Optional.of("the GPU kernels take up to " + MAX_GROUP + " query heads per KV head, not "
                    + geometry.groupSize());
        }
        return Optional.empty();
    }

    /**
     * Why the GPU kernels do not take visual spans of {@code bits}-bit keys and {@code valueBits}-bit values with these
     * statistics, or empty when they do: fp32 parameters, no wide key channels, per-channel statistics, one width of
     * 1, 2 or 4 bits. (Other spans are
     * stored, quantized on the CPU, and decoded by the CPU attention.)
     */
    static Optional<String> unsupportedSpans(int bits, int valueBits, Granularity keys, Granularity values,
            DType paramType, int wideKeyChannels) {
        if (paramType != DType.FP32) {
            return Optional.of("the GPU kernels read fp32 offsets and scales, not " + paramType);
        }
        if (wideKeyChannels > 0) {
            return Optional.of("the GPU kernels do not read wide key channels (" + wideKeyChannels + " per head)");
        }
        if (keys != Granularity.PER_CHANNEL || values != Granularity.PER_CHANNEL) {
            return Optional.of("the GPU kernels implement per-channel statistics, not " + keys + "/" + values);
        }
        if (valueBits != bits) {
            return Optional.of("the GPU kernels read keys and values of one code width, not " + bits + "-bit keys and "
                    + valueBits + "-bit values");
        }
        if (bits != 1 && bits != 2 && bits != 4) {
            return Optional.of("the GPU decode kernels handle 1, 2 and 4 bits, not " + bits);
        }
        return Optional.empty();
    }

    /**
     * Opens an fp16 cache for {@code geometry} on {@code context}'s device that never holds more than
     * {@code byteLimit} bytes, reserving its device memory now (a little more than the limit: see
     * {@link #deviceBytes()}), with the kernels of {@link KernelChoice#forDevice()}.
     *
     * @throws IllegalArgumentException when the GPU path cannot take the geometry ({@link #unsupportedReason}) or the
     *     limit is not positive and finite
     * @throws dev.calibquant.cuda.CudaOutOfMemoryException when the device cannot hold the reservation
     * @throws dev.calibquant.cuda.UnsupportedDeviceException when the device or driver cannot run the shipped
     *     kernels
     */
    public static DeviceKvCache open(CudaContext context, ModelGeometry geometry, long byteLimit) {
        return open(context, geometry, byteLimit, KernelChoice.forDevice());
    }

    /** {@link #open(CudaContext, ModelGeometry, long)} with an explicit kernel choice (tests of the JIT path). */
    public static DeviceKvCache open(CudaContext context, ModelGeometry geometry, long byteLimit, KernelChoice choice) {
        Objects.requireNonNull(context, "context");
        Objects.requireNonNull(choice, "choice");
        unsupportedReason(geometry, DType.FP16).ifPresent(why -> {
            throw new IllegalArgumentException(why);
        });
        long planeBytes = DeviceStorage.planeBytesFor(byteLimit); // checks the limit before anything is made
        KernelCatalog.Image image = choice.fromPtx() ? KernelCatalog.Image.PTX
                : KernelCatalog.Image.CUBIN_WHERE_SHIPPED;
        KernelCatalog kernels = choice.target() == null ? KernelCatalog.open(context, image)
                : KernelCatalog.open(context, choice.target(), image);
        DeviceStorage storage = null;
        try {
            storage = new DeviceStorage(context, planeBytes, kernels);
            return new DeviceKvCache(kernels, storage, new KvCacheManager(geometry, DType.FP16, storage, byteLimit));
        } catch (RuntimeException | Error e) {
            if (storage != null) {
                closeSuppressing(storage, e);
            }
            closeSuppressing(kernels, e);
            throw e;
        }
    }

    /** The sequences: create, fill, append, close them here (see {@link KvCacheManager}). */
    public KvCacheManager manager() {
        return manager;
    }

    public ModelGeometry geometry() {
        return manager.geometry();
    }

    /**
     * The decode attention over this cache for {@code calibration} (one per calibration, made on first use and owned
     * by the cache).
     *
     * @throws IllegalStateException when the cache is closed
     */
    public synchronized DeviceDecodeAttention attention(Calibration calibration) {
        Objects.requireNonNull(calibration, "calibration");
        if (closed) {
            throw new IllegalStateException("device KV cache is closed");
        }
        return attentions.computeIfAbsent(calibration, c -> new DeviceDecodeAttention(storage, manager.geometry(), c));
    }

    /**
     * A host copy of {@code layer} of {@code sequence}, in {@code arena}: every full-precision row up to the capacity
     * and every quantized span byte for byte as the GPU wrote them, readable by the CPU attention and reference.
     *
     * @throws IllegalArgumentException when the sequence is not this cache's
     * @throws IllegalStateException when the sequence is closed or the layer not filled
     */
    public LayerKvView download(Sequence sequence, int layer, Arena arena) {
        return storage.download(sequence, layer, arena);
    }

    /** Device memory this cache reserved: two planes of half the byte limit plus 1/16 each. */
    public long deviceBytes() {
        return storage.deviceBytes();
    }

    /** Device memory taken by live blocks, rounded to the storage's alignment, over both planes. */
    public long usedDeviceBytes() {
        return 2 * storage.usedPlaneBytes();
    }

    /** The kernel target loaded ({@code sm_90a}, {@code sm_80}). */
    public String kernelTarget() {
        return kernels.target();
    }

    /** The device, for messages: "cuda:0". */
    public String device() {
        return storage.name();
    }

    /** The storage (tests and the project's own tools). */
    DeviceStorage storage() {
        return storage;
    }

    /** The kernels (the project's own tools). */
    KernelCatalog kernels() {
        return kernels;
    }

    /**
     * Closes the attentions, the manager (freeing every sequence still open and the device memory) and the kernels.
     * Idempotent.
     *
     * @throws dev.calibquant.cache.CacheLeakException after freeing everything, when sequences were still open
     */
    @Override
    public void close() {
        List<DeviceDecodeAttention> made;
        synchronized (this) {
            if (closed) {
                return;
            }
            closed = true;
            made = new ArrayList<>(attentions.values());
            attentions.clear();
        }
        Closer closer = new Closer();
        made.forEach(closer::close);
        closer.close(manager);
        closer.close(kernels);
        closer.rethrow();
    }

    private static void closeSuppressing(AutoCloseable c, Throwable primary) {
        try {
            c.close();
        } catch (Exception e) {
            primary.addSuppressed(e);
        }
    }

    @Override
    public String toString() {
        return "device KV cache on " + storage.name() + " (" + manager.geometry() + ", " + deviceBytes()
                + " device bytes reserved)";
    }
}
