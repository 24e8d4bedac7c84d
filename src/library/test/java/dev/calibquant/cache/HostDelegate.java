package dev.calibquant.cache;

import java.lang.foreign.MemorySegment;

/**
 * A {@link KvStorage} that hands every call to a {@link HostStorage}; a test overrides the calls it makes fail (the
 * cache tests, and the sharding tests' failing shard).
 */
public class HostDelegate implements KvStorage {
    protected final HostStorage host;

    public HostDelegate(HostStorage host) {
        this.host = host;
    }

    /** The host block behind {@code block}: itself, unless a subclass's {@link #allocate} wrapped it. */
    protected StorageBlock unwrap(StorageBlock block) {
        return block;
    }

    @Override
    public String name() {
        return "host delegate";
    }

    @Override
    public StorageBlock allocate(long bytes, String label) {
        return host.allocate(bytes, label);
    }

    @Override
    public void write(MemorySegment source, StorageBlock target, RowCopy copy) {
        host.write(source, unwrap(target), copy);
    }

    @Override
    public void copy(StorageBlock source, StorageBlock target, RowCopy copy) {
        host.copy(unwrap(source), unwrap(target), copy);
    }

    @Override
    public long liveBytes() {
        return host.liveBytes();
    }

    @Override
    public int liveBlocks() {
        return host.liveBlocks();
    }

    @Override
    public void close() {
        host.close();
    }
}
