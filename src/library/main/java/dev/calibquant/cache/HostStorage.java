package dev.calibquant.cache;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Off-heap host memory: every block is one allocation in its own shared {@link Arena}, so blocks are freed one by one
 * (a layer's full-precision block is replaced when it grows) and may be used from any thread. Blocks are 64-byte
 * aligned.
 */
public final class HostStorage implements KvStorage {

    /** An empty storage in off-heap host memory. */
    public HostStorage() {
    }

    static final long ALIGNMENT = 64;

    private final Set<HostBlock> live = ConcurrentHashMap.newKeySet();
    private final AtomicLong liveBytes = new AtomicLong();
    private volatile boolean closed;

    @Override
    public String name() {
        return "host";
    }

    @Override
    public StorageBlock allocate(long bytes, String label) {
        if (bytes < 0) {
            throw new IllegalArgumentException("cannot allocate " + bytes + " bytes for " + label);
        }
        if (closed) {
            throw new IllegalStateException("host storage is closed; cannot allocate " + label);
        }
        Arena arena = Arena.ofShared();
        MemorySegment segment;
        try {
            segment = arena.allocate(bytes, ALIGNMENT);
        } catch (RuntimeException | Error e) {
            arena.close();
            throw e;
        }
        HostBlock block = new HostBlock(label, arena, segment);
        synchronized (this) { // with close(): a block is either in close's snapshot or refused here, never lost
            if (closed) {
                arena.close();
                throw new IllegalStateException("host storage is closed; cannot allocate " + label);
            }
            live.add(block);
            liveBytes.addAndGet(bytes);
        }
        return block;
    }

    @Override
    public void write(MemorySegment source, StorageBlock target, RowCopy copy) {
        MemorySegment to = own(target).segment();
        copy.checkWithin(source.byteSize(), to.byteSize());
        copyRows(source, to, copy);
    }

    @Override
    public void copy(StorageBlock source, StorageBlock target, RowCopy copy) {
        if (source == target) {
            throw new IllegalArgumentException("copy within one block (" + source.label() + ") is not supported");
        }
        MemorySegment from = own(source).segment();
        MemorySegment to = own(target).segment();
        copy.checkWithin(from.byteSize(), to.byteSize());
        copyRows(from, to, copy);
    }

    /** Another host storage's blocks are plain memory too. */
    @Override
    public boolean canCopyFrom(KvStorage other) {
        return other instanceof HostStorage;
    }

    @Override
    public void copyFrom(KvStorage other, StorageBlock source, StorageBlock target) {
        if (!(other instanceof HostStorage from)) {
            throw new UnsupportedOperationException(name() + " cannot copy blocks of " + other.name() + " directly");
        }
        MemorySegment src = from.own(source).segment();
        MemorySegment to = own(target).segment();
        if (src.byteSize() != to.byteSize()) {
            throw new IllegalArgumentException("copying block " + source.label() + " (" + src.byteSize()
                    + " bytes) into block " + target.label() + " (" + to.byteSize() + " bytes): sizes differ");
        }
        MemorySegment.copy(src, 0, to, 0, src.byteSize());
    }

    private static void copyRows(MemorySegment from, MemorySegment to, RowCopy copy) {
        for (int r = 0; r < copy.rows(); r++) {
            MemorySegment.copy(from, copy.sourceOffset() + r * copy.sourcePitch(),
                    to, copy.targetOffset() + r * copy.targetPitch(), copy.rowBytes());
        }
    }

    private HostBlock own(StorageBlock block) {
        if (!(block instanceof HostBlock host) || host.owner() != this) {
            throw new IllegalArgumentException("block " + block.label() + " does not belong to this host storage");
        }
        return host;
    }

    @Override
    public long liveBytes() {
        return liveBytes.get();
    }

    @Override
    public int liveBlocks() {
        return live.size();
    }

    @Override
    public void close() {
        List<String> leaked = new ArrayList<>();
        List<HostBlock> open;
        synchronized (this) {
            if (closed) {
                return;
            }
            closed = true;
            open = List.copyOf(live);
        }
        for (HostBlock block : open) {
            leaked.add(block.label() + " (" + block.byteSize() + " bytes)");
            block.close();
        }
        if (!leaked.isEmpty()) {
            throw new IllegalStateException("host storage closed with " + leaked.size()
                    + " blocks still open, now freed: " + String.join(", ", leaked));
        }
    }

    private final class HostBlock implements StorageBlock {
        private final String label;
        private final Arena arena;
        private final MemorySegment segment;
        private boolean open = true;

        HostBlock(String label, Arena arena, MemorySegment segment) {
            this.label = label;
            this.arena = arena;
            this.segment = segment;
        }

        HostStorage owner() {
            return HostStorage.this;
        }

        @Override
        public String label() {
            return label;
        }

        @Override
        public long byteSize() {
            return segment.byteSize();
        }

        @Override
        public synchronized MemorySegment segment() {
            if (!open) {
                throw new IllegalStateException("storage block " + label + " is closed");
            }
            return segment;
        }

        @Override
        public synchronized boolean isOpen() {
            return open;
        }

        @Override
        public void close() {
            synchronized (this) {
                if (!open) {
                    return;
                }
                open = false;
            }
            arena.close();
            live.remove(this);
            liveBytes.addAndGet(-segment.byteSize());
        }

        @Override
        public String toString() {
            return "host block " + label + " (" + byteSize() + " bytes)";
        }
    }
}
