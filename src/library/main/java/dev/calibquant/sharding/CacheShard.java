package dev.calibquant.sharding;

import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.MemoryUsage;
import dev.calibquant.cache.Sequence;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;

/**
 * One device's KV cache as a {@link ShardedKvCache} sees it: a name, the {@link KvCacheManager} of its sequences (with
 * its own byte limit), a decode attention per calibration, and a way to copy a layer to host memory. It owns all of
 * that; {@link #close()} closes it.
 *
 * <p>Two kinds ship: {@link DeviceCacheShard} (a {@link dev.calibquant.gpu.DeviceKvCache}) and {@link HostCacheShard}
 * (host memory and the CPU attention: the fallback where there is no GPU, and the test double of the set's logic).
 * Implementations are thread-safe.
 */
public interface CacheShard extends AutoCloseable {

    /** For messages and thread names: "cuda:0#1", "host-2". */
    String name();

    /** The sequences of this shard. The set creates, fills, appends to and closes them; use them through the set. */
    KvCacheManager manager();

    /** The decode attention over this shard's cache for {@code calibration}, owned by the shard. */
    DecodeAttention attention(Calibration calibration);

    /**
     * One decode step of {@code layer} over {@code batch} (sequences of this shard's manager): queries
     * {@code [batch][queryHeads][headDim]} of {@code queryType}, output fp32 of the same shape, written only on
     * success; the sequences' locks are held (in id order) while their blocks are read.
     */
    void decode(Calibration calibration, int layer, List<Sequence> batch, MemorySegment queries, DType queryType,
            int queryHeads, MemorySegment out);

    /**
     * A host copy of {@code layer} of {@code sequence} in {@code arena}: the full-precision block up to its capacity
     * and every quantized span, byte for byte, readable by the CPU attention and by {@link Sequence#restoreLayer}.
     */
    LayerKvView download(Sequence sequence, int layer, Arena arena);

    /** The manager's byte limit. */
    default long byteLimit() {
        return manager().byteLimit();
    }

    /** Live bytes of this shard's sequences, by kind. */
    default MemoryUsage usage() {
        return manager().usage();
    }

    /** Bytes this shard can still allocate before its limit. */
    default long freeBytes() {
        return byteLimit() - usage().totalBytes();
    }

    /** Closes what the shard owns; sequences still open are freed and reported as its manager does. */
    @Override
    void close();
}
