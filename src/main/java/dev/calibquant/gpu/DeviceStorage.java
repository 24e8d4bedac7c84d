package dev.calibquant.gpu;

import dev.calibquant.cache.BlockPair;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.KvStorage;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.RowCopy;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.StorageBlock;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.CudaStream;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.cuda.PinnedHostBuffer;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.OptionalLong;

/**
 * Device memory behind the {@link KvCacheManager}: the same manager API as {@link dev.calibquant.cache.HostStorage},
 * with the bytes on the GPU.
 *
 * <p><b>Layout.</b> Two planes of equal size, each one device allocation made when the storage is. A
 * {@link #allocatePair pair} takes one range of both planes: keys at offset {@code o} of plane 0, values at offset
 * {@code o} of plane 1. That is how the CalibQuant kernels address keys and values (one table offset, one base pointer
 * per plane), so {@link ManagedDecodeAttention} runs them on the manager's sequences in place. A single
 * {@link #allocate block} takes its range in plane 0; the same range of plane 1 stays unused. Ranges are multiples
 * of {@value #ALIGNMENT} bytes, which the kernels' offsets need (16 elements of fp16 and fp32 arrays, 16 code bytes).
 *
 * <p>Why one reservation and not {@code cuMemAlloc} per block: pairs need one offset valid in two allocations; the
 * cache frees a block at every growth of a layer, and {@code cuMemFree} waits for the whole device; and the device
 * memory a cache may take is fixed and taken up front, so another user of the GPU cannot starve it half-way.
 *
 * <p><b>Streams.</b> All device work (zero-fill by memset, uploads, device copies, downloads, the decode launches
 * of {@link ManagedDecodeAttention}) is queued on the storage's own stream, so it runs in order, and a freed range is
 * reused only by work queued after whatever read it. {@link #write} stages host rows in pinned memory and waits for
 * its copies (the source is reusable, and the staging buffer reused, once it returns); {@link #copy} and allocation
 * (its zero-fill) return once queued.
 *
 * <p><b>Segments.</b> A block's {@link StorageBlock#segment()} carries its device address and size and cannot be
 * dereferenced: its scope is closed before it is handed out, so a host read throws ({@link IllegalStateException},
 * or {@link WrongThreadException} on another thread) rather than taking a device address for host memory. The scope
 * also identifies the block: {@link #download} and {@link ManagedDecodeAttention} find a view's blocks by it, and
 * refuse a segment of a block freed since the view was taken.
 *
 * <p><b>Threads.</b> Every method may be called from any thread; each takes the storage's lock, so device work from
 * several threads is serialized (it shares one stream anyway).
 */
public final class DeviceStorage implements KvStorage {

    /** Offset granularity in a plane, bytes. */
    static final long ALIGNMENT = 64;
    /** Extra room per plane beyond half a manager's byte limit, as a fraction: see {@link #planeBytesFor}. */
    static final int HEADROOM_DIVISOR = 16;
    private static final long MIN_STAGING_BYTES = 1L << 16;
    /** Alignment of the host segments {@link #download} makes, as {@link dev.calibquant.cache.HostStorage}'s. */
    private static final long HOST_ALIGNMENT = 64;

    /** Where a byte range of a block lies: plane 0 (keys, single blocks) or 1 (values), byte offset in the plane. */
    record Placement(int plane, long offset) {}

    private final CudaContext context;
    private final String name;
    private final CudaStream stream;
    private final DeviceBuffer[] planes;
    private final RangeAllocator ranges;
    private final Map<MemorySegment.Scope, DeviceBlock> live = new HashMap<>();
    private PinnedHostBuffer staging;
    private long liveBytes;
    private boolean closed;

    /**
     * Reserves two planes of {@code planeBytes} (rounded up to {@value #ALIGNMENT}) on the context's device.
     *
     * @throws dev.calibquant.cuda.CudaOutOfMemoryException when the device cannot hold them; nothing is kept
     */
    public DeviceStorage(CudaContext context, long planeBytes) {
        this.context = Objects.requireNonNull(context, "context");
        if (planeBytes <= 0) {
            throw new IllegalArgumentException("device storage planes must be positive, got " + planeBytes + " bytes");
        }
        long plane = Math.multiplyExact(Math.ceilDiv(planeBytes, ALIGNMENT), ALIGNMENT);
        this.name = "cuda:" + context.device().properties().ordinal();
        List<AutoCloseable> made = new ArrayList<>();
        try {
            stream = context.createStream();
            made.add(stream);
            DeviceBuffer keys = context.allocate(plane);
            made.add(keys);
            DeviceBuffer values = context.allocate(plane);
            made.add(values);
            planes = new DeviceBuffer[] {keys, values};
        } catch (RuntimeException | Error e) {
            for (AutoCloseable c : made.reversed()) {
                try {
                    c.close();
                } catch (Exception suppressed) {
                    e.addSuppressed(suppressed);
                }
            }
            throw e;
        }
        this.ranges = new RangeAllocator(plane, ALIGNMENT);
    }

    /**
     * Plane size for a manager that never holds more than {@code byteLimit} bytes: half of it (every pair puts one
     * half in each plane; the cache's pairs have halves of equal size) plus 1/{@value #HEADROOM_DIVISOR} for the
     * rounding of ranges to {@value #ALIGNMENT} bytes (under 1 % for blocks of a few KiB and up, which is all a cache
     * of 64-token capacity steps allocates) and for some fragmentation. Past that the storage refuses with
     * {@link DeviceOutOfMemoryError} before the manager's limit is reached.
     */
    static long planeBytesFor(long byteLimit) {
        if (byteLimit <= 0 || byteLimit == KvCacheManager.NO_LIMIT) {
            throw new IllegalArgumentException("a device cache needs a finite, positive byte limit (its memory is "
                    + "reserved up front), got " + byteLimit);
        }
        long half = Math.ceilDiv(byteLimit, 2);
        return Math.addExact(half, Math.ceilDiv(half, HEADROOM_DIVISOR));
    }

    /** A storage sized for a manager with {@code byteLimit} (see {@link #planeBytesFor}). */
    public static DeviceStorage forLimit(CudaContext context, long byteLimit) {
        return new DeviceStorage(context, planeBytesFor(byteLimit));
    }

    /**
     * A KV-cache manager whose bytes live on the context's device: a {@link #forLimit} storage, owned by the manager
     * (closing the manager frees it). For GPU decode attention over it, make the storage yourself and hand it to both
     * the manager and {@link ManagedDecodeAttention}.
     */
    public static KvCacheManager newManager(CudaContext context, ModelGeometry geometry, DType dtype, long byteLimit) {
        DeviceStorage storage = forLimit(context, byteLimit);
        try {
            return new KvCacheManager(geometry, dtype, storage, byteLimit);
        } catch (RuntimeException | Error e) {
            try {
                storage.close();
            } catch (RuntimeException suppressed) {
                e.addSuppressed(suppressed);
            }
            throw e;
        }
    }

    @Override
    public String name() {
        return name;
    }

    CudaContext context() {
        return context;
    }

    /** The stream all of this storage's device work runs on. */
    CudaStream stream() {
        return stream;
    }

    /** Plane 0 (keys) or 1 (values). */
    DeviceBuffer plane(int i) {
        return planes[i];
    }

    /** Bytes of each plane. */
    public long planeBytes() {
        return ranges.capacity();
    }

    /** Bytes of each plane taken by live ranges (block sizes rounded up to {@value #ALIGNMENT}). */
    public synchronized long usedPlaneBytes() {
        return ranges.used();
    }

    /** Device memory this storage holds, used or not: its two planes. */
    public long deviceBytes() {
        return 2 * ranges.capacity();
    }

    @Override
    public synchronized long liveBytes() {
        return liveBytes;
    }

    @Override
    public synchronized int liveBlocks() {
        return live.size();
    }

    @Override
    public StorageBlock allocate(long bytes, String label) {
        checkSize(bytes, label);
        synchronized (this) {
            checkOpen(label);
            long offset = reserve(bytes, label);
            Range range = new Range(offset, Math.max(1, bytes), 1);
            try {
                DeviceBlock block = new DeviceBlock(label, 0, range, bytes);
                zero(block);
                register(block);
                return block;
            } catch (RuntimeException | Error e) {
                ranges.release(range.offset, range.length);
                throw e;
            }
        }
    }

    @Override
    public BlockPair allocatePair(long keyBytes, long valueBytes, String label) {
        checkSize(keyBytes, label + " keys");
        checkSize(valueBytes, label + " values");
        synchronized (this) {
            checkOpen(label);
            long bytes = Math.max(keyBytes, valueBytes);
            long offset = reserve(bytes, label);
            Range range = new Range(offset, Math.max(1, bytes), 2);
            try {
                DeviceBlock keys = new DeviceBlock(label + " keys", 0, range, keyBytes);
                DeviceBlock values = new DeviceBlock(label + " values", 1, range, valueBytes);
                zero(keys);
                zero(values);
                register(keys);
                register(values);
                return new BlockPair(keys, values);
            } catch (RuntimeException | Error e) {
                ranges.release(range.offset, range.length);
                throw e;
            }
        }
    }

    private static void checkSize(long bytes, String label) {
        if (bytes < 0) {
            throw new IllegalArgumentException("cannot allocate " + bytes + " bytes for " + label);
        }
    }

    private long reserve(long bytes, String label) {
        long length = Math.max(1, bytes);
        OptionalLong offset = ranges.allocate(length);
        if (offset.isEmpty()) {
            throw new DeviceOutOfMemoryError(label, ranges.roundUp(length), ranges.used(), ranges.capacity(),
                    ranges.largestFree());
        }
        return offset.getAsLong();
    }

    /** Queues zeros over the block on the stream, after whatever earlier work read its range. */
    private void zero(DeviceBlock block) {
        planes[block.plane].fillAsync((byte) 0, block.range.offset, block.bytes, stream);
    }

    private void register(DeviceBlock block) {
        live.put(block.handle.scope(), block);
        liveBytes += block.bytes;
    }

    @Override
    public void write(MemorySegment source, StorageBlock target, RowCopy copy) {
        Objects.requireNonNull(source, "source");
        Objects.requireNonNull(copy, "copy");
        copy.checkWithin(source.byteSize(), target.byteSize());
        synchronized (this) {
            DeviceBlock to = own(target);
            if (copy.totalBytes() == 0) {
                return;
            }
            long rowBytes = copy.rowBytes();
            // rows * rowBytes fits the target (checked above: target rows do not overlap), so it fits a long
            PinnedHostBuffer stage = staging(copy.totalBytes());
            MemorySegment host = stage.segment();
            for (int r = 0; r < copy.rows(); r++) {
                MemorySegment.copy(source, copy.sourceOffset() + r * copy.sourcePitch(), host, r * rowBytes, rowBytes);
            }
            try {
                for (RowRuns.Run run : RowRuns.of(0, rowBytes, to.range.offset + copy.targetOffset(),
                        copy.targetPitch(), rowBytes, copy.rows())) {
                    planes[to.plane].copyFromAsync(stage, run.source(), run.target(), run.bytes(), stream);
                }
            } catch (RuntimeException | Error e) {
                stream.synchronizeAfter(e); // copies queued before the failure still read the staging buffer
                throw e;
            }
            stream.synchronize(); // the staging buffer is reused by the next call
        }
    }

    @Override
    public void copy(StorageBlock source, StorageBlock target, RowCopy copy) {
        Objects.requireNonNull(source, "source");
        Objects.requireNonNull(target, "target");
        Objects.requireNonNull(copy, "copy");
        if (source == target) {
            throw new IllegalArgumentException("copy within one block (" + source.label() + ") is not supported");
        }
        copy.checkWithin(source.byteSize(), target.byteSize());
        synchronized (this) {
            DeviceBlock from = own(source);
            DeviceBlock to = own(target);
            if (copy.totalBytes() == 0) {
                return;
            }
            for (RowRuns.Run run : RowRuns.of(from.range.offset + copy.sourceOffset(), copy.sourcePitch(),
                    to.range.offset + copy.targetOffset(), copy.targetPitch(), copy.rowBytes(), copy.rows())) {
                planes[to.plane].copyFromAsync(planes[from.plane], run.source(), run.target(), run.bytes(), stream);
            }
        }
    }

    private DeviceBlock own(StorageBlock block) {
        if (!(block instanceof DeviceBlock device) || device.owner() != this) {
            throw new IllegalArgumentException("block " + block.label() + " does not belong to this device storage");
        }
        if (!device.open) {
            throw new IllegalStateException("storage block " + block.label() + " is closed");
        }
        return device;
    }

    /** A pinned buffer of at least {@code bytes}, reused across calls; caller holds the lock. */
    private PinnedHostBuffer staging(long bytes) {
        if (staging == null || staging.byteSize() < bytes) {
            if (staging != null) {
                staging.close();
                staging = null;
            }
            staging = context.allocatePinned(Math.max(MIN_STAGING_BYTES, bytes));
        }
        return staging;
    }

    /**
     * Where {@code segment} (a block's segment or a slice of one) lies; caller holds the lock.
     *
     * @throws IllegalArgumentException when it is not in a live block of this storage
     */
    Placement locate(MemorySegment segment) {
        DeviceBlock block = live.get(segment.scope());
        if (block == null) {
            throw new IllegalArgumentException("a segment of " + segment.byteSize() + " bytes is not in a live block of "
                    + "device storage " + name + ": it is host memory, another storage's, or a block freed since the "
                    + "view was taken (a view is valid until the next append to its layer)");
        }
        long inBlock = segment.address() - block.address;
        if (inBlock < 0 || inBlock > block.bytes - segment.byteSize()) {
            throw new IllegalArgumentException("a segment of " + segment.byteSize() + " bytes lies outside block "
                    + block.label);
        }
        return new Placement(block.plane, block.range.offset + inBlock);
    }

    /**
     * A host copy of {@code view}, a layer of a manager stored here (taken with {@link Sequence#layer}), in
     * {@code arena}: every full-precision row up to the capacity and every quantized span, byte for byte, readable by
     * the CPU reference and the CPU attention.
     *
     * @throws IllegalArgumentException when a segment of the view is not in a live block of this storage
     */
    public LayerKvView download(LayerKvView view, Arena arena) {
        Objects.requireNonNull(view, "view");
        Objects.requireNonNull(arena, "arena");
        List<MemorySegment> parts = new ArrayList<>();
        parts.add(view.fullKeys());
        parts.add(view.fullValues());
        for (QuantizedSpan q : view.visualSpans()) {
            parts.addAll(List.of(q.keyCodes(), q.valueCodes(), q.keyScale(), q.keyOffset(), q.valueScale(),
                    q.valueOffset()));
        }
        MemorySegment[] host = download(parts, arena);
        List<QuantizedSpan> spans = new ArrayList<>();
        for (int i = 0; i < view.visualSpans().size(); i++) {
            QuantizedSpan q = view.visualSpans().get(i);
            int p = 2 + 6 * i;
            spans.add(new QuantizedSpan(q.tokens(), q.kvHeads(), q.headDim(), q.bits(), q.keyGranularity(),
                    q.valueGranularity(), host[p], host[p + 1], host[p + 2], host[p + 3], host[p + 4], host[p + 5]));
        }
        return new DownloadedLayer(view.kvHeads(), view.headDim(), view.dtype(), view.fullTokens(), view.fullCapacity(),
                host[0], host[1], spans);
    }

    /** Host copies, in {@code arena}, of segments of live blocks of this storage: queued, then waited for. */
    MemorySegment[] download(List<MemorySegment> parts, Arena arena) {
        MemorySegment[] host = new MemorySegment[parts.size()];
        synchronized (this) {
            checkOpen("download");
            Placement[] at = new Placement[parts.size()];
            long total = 0;
            for (int i = 0; i < at.length; i++) {
                at[i] = locate(parts.get(i));
                total = Math.addExact(total, parts.get(i).byteSize());
            }
            PinnedHostBuffer stage = staging(total);
            long pos = 0;
            try {
                for (int i = 0; i < at.length; i++) {
                    long bytes = parts.get(i).byteSize();
                    planes[at[i].plane()].copyToAsync(at[i].offset(), stage, pos, bytes, stream);
                    pos += bytes;
                }
            } catch (RuntimeException | Error e) {
                stream.synchronizeAfter(e); // copies queued before the failure still write the staging buffer
                throw e;
            }
            stream.synchronize();
            pos = 0;
            for (int i = 0; i < at.length; i++) {
                long bytes = parts.get(i).byteSize();
                host[i] = arena.allocate(bytes, HOST_ALIGNMENT);
                MemorySegment.copy(stage.segment(), pos, host[i], 0, bytes);
                pos += bytes;
            }
        }
        return host;
    }

    /**
     * A host copy of {@code layer} of {@code sequence} (see {@link #download(LayerKvView, Arena)}), taken under the
     * sequence's lock so that no append moves its blocks meanwhile.
     */
    public LayerKvView download(Sequence sequence, int layer, Arena arena) {
        synchronized (sequence) { // Sequence's methods lock the sequence itself, then this storage
            return download(sequence.layer(layer), arena);
        }
    }

    private void checkOpen(String what) {
        if (closed) {
            throw new IllegalStateException("device storage " + name + " is closed; cannot " + what);
        }
    }

    /** Caller holds the lock. */
    void checkOpen() {
        checkOpen("use it");
    }

    /**
     * Frees the planes and everything in them, after the work queued on the stream has finished. Blocks still open
     * are freed too and reported: an {@link IllegalStateException} listing them. Idempotent.
     */
    @Override
    public void close() {
        List<String> leaked = new ArrayList<>();
        synchronized (this) {
            if (closed) {
                return;
            }
            closed = true;
            for (DeviceBlock block : live.values()) {
                leaked.add(block.label + " (" + block.bytes + " bytes)");
                block.open = false;
            }
            live.clear();
            liveBytes = 0;
        }
        RuntimeException failure = null;
        try {
            stream.synchronize(); // queued copies may still read or write the planes
        } catch (RuntimeException e) {
            failure = e;
        }
        List<AutoCloseable> owned = new ArrayList<>();
        if (staging != null) {
            owned.add(staging);
        }
        owned.addAll(List.of(planes[1], planes[0], stream));
        for (AutoCloseable c : owned) {
            try {
                c.close();
            } catch (Exception e) {
                RuntimeException r = e instanceof RuntimeException re ? re : new IllegalStateException(e);
                if (failure == null) {
                    failure = r;
                } else {
                    failure.addSuppressed(r);
                }
            }
        }
        if (!leaked.isEmpty()) {
            IllegalStateException leak = new IllegalStateException("device storage " + name + " closed with "
                    + leaked.size() + " blocks still open, now freed: " + String.join(", ", leaked));
            if (failure != null) {
                leak.addSuppressed(failure);
            }
            throw leak;
        }
        if (failure != null) {
            throw failure;
        }
    }

    @Override
    public String toString() {
        return "device storage " + name + " (2 planes of " + ranges.capacity() + " bytes)";
    }

    /** A range of the planes, freed when every block in it is closed. Guarded by the storage's lock. */
    private static final class Range {
        final long offset;
        final long length;
        int holders;

        Range(long offset, long length, int holders) {
            this.offset = offset;
            this.length = length;
            this.holders = holders;
        }
    }

    private final class DeviceBlock implements StorageBlock {
        private final String label;
        private final int plane;
        private final Range range;
        private final long bytes;
        private final long address;
        private final MemorySegment handle;
        private boolean open = true; // guarded by the storage's lock

        DeviceBlock(String label, int plane, Range range, long bytes) {
            this.label = label;
            this.plane = plane;
            this.range = range;
            this.bytes = bytes;
            this.address = planes[plane].address(range.offset);
            this.handle = deadSegment(address, bytes);
        }

        DeviceStorage owner() {
            return DeviceStorage.this;
        }

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
            synchronized (DeviceStorage.this) {
                if (!open) {
                    throw new IllegalStateException("storage block " + label + " is closed");
                }
                return handle;
            }
        }

        @Override
        public boolean isOpen() {
            synchronized (DeviceStorage.this) {
                return open;
            }
        }

        @Override
        public void close() {
            synchronized (DeviceStorage.this) {
                if (!open) {
                    return;
                }
                open = false;
                live.remove(handle.scope());
                liveBytes -= bytes;
                if (--range.holders == 0) {
                    // work already queued that reads this range runs before any later zero-fill or upload into it
                    ranges.release(range.offset, range.length);
                }
            }
        }

        @Override
        public String toString() {
            return "device block " + label + " (" + bytes + " bytes, plane " + plane + " at " + range.offset + ")";
        }
    }

    /**
     * A segment with the device address and size of a block whose scope is already closed: it can be sliced and
     * asked for its address, never read or written from the host. Its scope is its own, so it names the block.
     */
    private static MemorySegment deadSegment(long address, long bytes) {
        try (Arena scope = Arena.ofConfined()) {
            return MemorySegment.ofAddress(address).reinterpret(bytes, scope, null);
        }
    }
}
