package dev.calibquant.gpu;

import dev.calibquant.cache.BlockPair;
import dev.calibquant.cache.KvStorage;
import dev.calibquant.cache.RowCopy;
import dev.calibquant.cache.StorageBlock;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * A test stand-in for {@link DeviceStorage} in host memory: two planes, pairs at one offset of both, single blocks in
 * plane 0, offsets multiples of {@link DeviceStorage#ALIGNMENT} (never reused, which a test does not need). So the
 * decode tables can be built from a real manager's views, and the kernels' addressing replayed, without a GPU.
 * Row copies are checked against both sizes, then plain host copies.
 */
final class PlanarHostStorage implements KvStorage {
    private final Arena arena = Arena.ofShared();
    private final MemorySegment[] planes;
    private long next;
    private long liveBytes;
    private int liveBlocks;

    PlanarHostStorage(long planeBytes) {
        planes = new MemorySegment[] {arena.allocate(planeBytes, 256), arena.allocate(planeBytes, 256)};
    }

    MemorySegment plane(int i) {
        return planes[i];
    }

    /** Where a slice of a plane lies, as {@link DeviceStorage#locate} says it for a device block. */
    DeviceStorage.Placement locate(MemorySegment segment) {
        for (int p = 0; p < 2; p++) {
            long offset = segment.address() - planes[p].address();
            if (offset >= 0 && offset + segment.byteSize() <= planes[p].byteSize()) {
                return new DeviceStorage.Placement(p, offset);
            }
        }
        throw new IllegalArgumentException("segment is not in a plane");
    }

    @Override
    public String name() {
        return "planar host";
    }

    @Override
    public synchronized StorageBlock allocate(long bytes, String label) {
        return block(0, reserve(bytes), bytes, label);
    }

    @Override
    public synchronized BlockPair allocatePair(long keyBytes, long valueBytes, String label) {
        long offset = reserve(Math.max(keyBytes, valueBytes));
        return new BlockPair(block(0, offset, keyBytes, label + " keys"), block(1, offset, valueBytes,
                label + " values"));
    }

    private long reserve(long bytes) {
        long offset = next;
        next += Math.ceilDiv(Math.max(1, bytes), DeviceStorage.ALIGNMENT) * DeviceStorage.ALIGNMENT;
        if (next > planes[0].byteSize()) {
            throw new OutOfMemoryError("planar host storage is full");
        }
        return offset;
    }

    private StorageBlock block(int plane, long offset, long bytes, String label) {
        MemorySegment segment = planes[plane].asSlice(offset, bytes);
        segment.fill((byte) 0);
        liveBytes += bytes;
        liveBlocks++;
        return new StorageBlock() {
            private boolean open = true;

            @Override
            public String label() {
                return label;
            }

            @Override
            public long byteSize() {
                return bytes;
            }

            @Override
            public MemorySegment segment() {
                return segment;
            }

            @Override
            public boolean isOpen() {
                return open;
            }

            @Override
            public void close() {
                synchronized (PlanarHostStorage.this) {
                    if (open) {
                        open = false;
                        liveBytes -= bytes;
                        liveBlocks--;
                    }
                }
            }
        };
    }

    @Override
    public void write(MemorySegment source, StorageBlock target, RowCopy copy) {
        copyRows(source, target.segment(), copy);
    }

    @Override
    public void copy(StorageBlock source, StorageBlock target, RowCopy copy) {
        copyRows(source.segment(), target.segment(), copy);
    }

    private static void copyRows(MemorySegment from, MemorySegment to, RowCopy copy) {
        copy.checkWithin(from.byteSize(), to.byteSize());
        for (int r = 0; r < copy.rows(); r++) {
            MemorySegment.copy(from, copy.sourceOffset() + r * copy.sourcePitch(), to,
                    copy.targetOffset() + r * copy.targetPitch(), copy.rowBytes());
        }
    }

    @Override
    public synchronized long liveBytes() {
        return liveBytes;
    }

    @Override
    public synchronized int liveBlocks() {
        return liveBlocks;
    }

    @Override
    public void close() {
        arena.close();
    }
}
