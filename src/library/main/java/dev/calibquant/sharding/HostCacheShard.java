package dev.calibquant.sharding;

import dev.calibquant.attention.CpuCalibQuantAttention;
import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * A shard in host memory decoded by the CPU attention ({@link CpuCalibQuantAttention}): the fallback where there is
 * no GPU, and, over a manager whose storage fails on purpose, the test double of a failing device.
 */
public final class HostCacheShard implements CacheShard {
    private final String name;
    private final KvCacheManager manager;
    private final Map<Calibration, CpuCalibQuantAttention> attentions = new LinkedHashMap<>();

    /**
     * A shard over {@code manager}, which it owns from now on.
     *
     * @throws IllegalArgumentException when the name is blank
     */
    public HostCacheShard(String name, KvCacheManager manager) {
        this.name = Inputs.checkShardName(name);
        this.manager = Objects.requireNonNull(manager, "manager");
    }

    /** A shard of {@code geometry} in off-heap host memory that never holds more than {@code byteLimit} bytes. */
    public static HostCacheShard onHost(String name, ModelGeometry geometry, DType dtype, long byteLimit) {
        Inputs.checkShardName(name);
        return new HostCacheShard(name, KvCacheManager.onHost(geometry, dtype, byteLimit));
    }

    @Override
    public String name() {
        return name;
    }

    @Override
    public KvCacheManager manager() {
        return manager;
    }

    @Override
    public synchronized DecodeAttention attention(Calibration calibration) {
        Objects.requireNonNull(calibration, "calibration");
        return attentions.computeIfAbsent(calibration, CpuCalibQuantAttention::new);
    }

    @Override
    public void decode(Calibration calibration, int layer, List<Sequence> batch, MemorySegment queries,
            DType queryType, int queryHeads, MemorySegment out) {
        DecodeAttention attention = attention(calibration);
        Sequence.holdingLocks(batch, () -> { // no append moves a block while the CPU reads it
            attention.decode(batch.stream().map(s -> s.layer(layer)).toList(), queries, queryType, queryHeads, out);
            return null;
        });
    }

    @Override
    public LayerKvView download(Sequence sequence, int layer, Arena arena) {
        synchronized (sequence) { // the view stays valid while it is copied
            return HeadSlices.copy(sequence.layer(layer), arena);
        }
    }

    @Override
    public void close() {
        manager.close();
    }

    @Override
    public String toString() {
        return "host shard " + name;
    }
}
