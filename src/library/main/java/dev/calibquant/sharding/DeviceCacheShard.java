package dev.calibquant.sharding;

import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.gpu.DeviceKvCache;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.Objects;

/**
 * A shard on a GPU: one {@link DeviceKvCache} (its kernels, its reserved device memory, its stream) and its
 * {@link dev.calibquant.gpu.DeviceDecodeAttention}s. Several shards may share one {@link CudaContext} (each has its
 * own storage and stream); the context stays the caller's.
 */
public final class DeviceCacheShard implements CacheShard {
    private final String name;
    private final DeviceKvCache cache;

    /** A shard over {@code cache}, which it owns from now on. */
    DeviceCacheShard(String name, DeviceKvCache cache) {
        this.name = name;
        this.cache = cache;
    }

    /**
     * Opens a device cache of {@code geometry} on {@code context}'s device that never holds more than
     * {@code byteLimit} bytes (see {@link DeviceKvCache#open(CudaContext, ModelGeometry, long)}).
     */
    public static DeviceCacheShard open(String name, CudaContext context, ModelGeometry geometry, long byteLimit) {
        Inputs.checkShardName(name);
        return new DeviceCacheShard(name, DeviceKvCache.open(context, geometry, byteLimit));
    }

    /** The device cache behind this shard (its device memory, kernel target, downloads). */
    public DeviceKvCache deviceCache() {
        return cache;
    }

    @Override
    public String name() {
        return name;
    }

    @Override
    public KvCacheManager manager() {
        return cache.manager();
    }

    @Override
    public DecodeAttention attention(Calibration calibration) {
        return cache.attention(calibration);
    }

    @Override
    public void decode(Calibration calibration, int layer, List<Sequence> batch, MemorySegment queries,
            DType queryType, int queryHeads, MemorySegment out) {
        cache.attention(Objects.requireNonNull(calibration, "calibration")).decode(layer, batch, queries, queryType,
                queryHeads, out);
    }

    @Override
    public LayerKvView download(Sequence sequence, int layer, Arena arena) {
        return cache.download(sequence, layer, arena);
    }

    @Override
    public void close() {
        cache.close();
    }

    @Override
    public String toString() {
        return "device shard " + name + " (" + cache + ")";
    }
}
