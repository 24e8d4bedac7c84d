package dev.calibquant.sharding;

import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.Sequence;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.TimeUnit;

/**
 * A shard (host or device) whose decode fails while {@link #failing} is set, notes the thread it decoded on, and waits
 * at {@link #meet} (when set) for the other shards' decodes: it passes only if they run at the same time.
 */
final class FlakyShard implements CacheShard {
    final CacheShard inner;
    volatile boolean failing;
    volatile CyclicBarrier meet;
    volatile String decodedOn;

    FlakyShard(CacheShard inner) {
        this.inner = inner;
    }

    @Override
    public String name() {
        return inner.name();
    }

    @Override
    public KvCacheManager manager() {
        return inner.manager();
    }

    @Override
    public DecodeAttention attention(Calibration calibration) {
        return inner.attention(calibration);
    }

    @Override
    public void decode(Calibration calibration, int layer, List<Sequence> batch, MemorySegment queries,
            DType queryType, int queryHeads, MemorySegment out) {
        if (failing) {
            throw new IllegalStateException("injected decode failure");
        }
        decodedOn = Thread.currentThread().getName();
        CyclicBarrier m = meet;
        if (m != null) {
            try {
                m.await(20, TimeUnit.SECONDS);
            } catch (Exception e) {
                throw new IllegalStateException("the other shards did not decode at the same time", e);
            }
        }
        inner.decode(calibration, layer, batch, queries, queryType, queryHeads, out);
    }

    @Override
    public LayerKvView download(Sequence sequence, int layer, Arena arena) {
        return inner.download(sequence, layer, arena);
    }

    @Override
    public void close() {
        inner.close();
    }
}
