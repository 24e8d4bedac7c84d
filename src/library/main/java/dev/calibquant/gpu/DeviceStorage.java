package dev.calibquant.gpu;

import dev.calibquant.cache.BlockPair;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.KvStorage;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.LayerPrefill;
import dev.calibquant.cache.RowAppend;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.RowCopy;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.StorageBlock;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.CudaStream;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.cuda.PinnedHostBuffer;
import dev.calibquant.kernels.CalibQuantKernels;
import dev.calibquant.kernels.CalibQuantKernels.CachePointers;
import dev.calibquant.kernels.CalibQuantKernels.DevicePointer;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.kernels.QuantizePlan;
import dev.calibquant.profiling.Nvtx;
import dev.calibquant.quant.ClipAnchor;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
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
 * per plane), so {@link DeviceDecodeAttention} runs them on the manager's sequences in place. A single
 * {@link #allocate block} takes its range in plane 0; the same range of plane 1 stays unused. Ranges are multiples
 * of {@value #ALIGNMENT} bytes, which the kernels' offsets need (16 elements of fp16 and fp32 arrays, 16 code bytes).
 *
 * <p>Why one reservation and not {@code cuMemAlloc} per block: pairs need one offset valid in two allocations; the
 * cache frees a block at every growth of a layer, and {@code cuMemFree} waits for the whole device; and the device
 * memory a cache may take is fixed and taken up front, so another user of the GPU cannot starve it half-way.
 *
 * <p><b>Streams.</b> All device work (zero-fill by memset, uploads, device copies, downloads, the decode launches
 * of {@link DeviceDecodeAttention}) is queued on the storage's own stream, so it runs in order, and a freed range is
 * reused only by work queued after whatever read it. {@link #write} stages host rows in pinned memory and waits for
 * its copies (the source is reusable, and the staging buffer reused, once it returns); {@link #copy} and allocation
 * (its zero-fill) return once queued.
 *
 * <p><b>Segments.</b> A block's {@link StorageBlock#segment()} carries its device address and size and cannot be
 * dereferenced: its scope is closed before it is handed out, so a host read throws ({@link IllegalStateException},
 * or {@link WrongThreadException} on another thread) rather than taking a device address for host memory. The scope
 * also identifies the block: {@link #download} and {@link DeviceDecodeAttention} find a view's blocks by it, and
 * refuse a segment of a block freed since the view was taken.
 *
 * <p><b>Threads.</b> Every method may be called from any thread; each takes the storage's lock, so device work from
 * several threads is serialized (it shares one stream anyway).
 */
final class DeviceStorage implements KvStorage {
    private static final java.util.concurrent.atomic.AtomicLong LOCK_ORDER = new java.util.concurrent.atomic.AtomicLong();

    /** Offset granularity in a plane, bytes. */
    static final long ALIGNMENT = 64;
    /** Extra room per plane beyond half a manager's byte limit, as a fraction: see {@link #planeBytesFor}. */
    static final int HEADROOM_DIVISOR = 16;
    /** Alignment of the host segments {@link #download} makes, as {@link dev.calibquant.cache.HostStorage}'s. */
    private static final long HOST_ALIGNMENT = 64;

    /** Where a byte range of a block lies: plane 0 (keys, single blocks) or 1 (values), byte offset in the plane. */
    record Placement(int plane, long offset) {}

    private final CudaContext context;
    private final String name;
    private final CudaStream stream;
    /** A JVM-wide order in which {@link #copyFrom} takes two storages' locks. */
    private final long lockOrder = LOCK_ORDER.incrementAndGet();
    private final DeviceBuffer[] planes;
    private final RangeAllocator ranges;
    private final Map<MemorySegment.Scope, DeviceBlock> live = new HashMap<>();
    /** The kernels that quantize at prefill and append a batch's rows; null: both on the host path. */
    private final KernelCatalog catalog;
    private final Map<Integer, CalibQuantKernels> kernels = new HashMap<>();
    private final Nvtx.Name prefillRange = Nvtx.rangeName(Nvtx.PREFILL);
    private final Staging scratch;
    private long liveBytes;
    private boolean closed;

    /**
     * Reserves two planes of {@code planeBytes} (rounded up to {@value #ALIGNMENT}) on the context's device.
     *
     * @throws dev.calibquant.cuda.CudaOutOfMemoryException when the device cannot hold them; nothing is kept
     */
    public DeviceStorage(CudaContext context, long planeBytes) {
        this(context, planeBytes, null);
    }

    /**
     * Reserves two planes as {@link #DeviceStorage(CudaContext, long)}; with {@code catalog} (loaded in the same
     * context, not owned) the storage quantizes visual spans at prefill on the GPU ({@code quantize_pack}) and appends a
     * batch's rows in one launch ({@code append_token}), where the kernels handle the layout (fp16, head dim 64 or 128,
     * per-channel 1, 2 or 4 bits); otherwise, and for other layouts, it quantizes on the CPU and uploads.
     */
    DeviceStorage(CudaContext context, long planeBytes, KernelCatalog catalog) {
        this.context = Objects.requireNonNull(context, "context");
        if (catalog != null && catalog.context() != context) {
            throw new IllegalArgumentException("the kernels are loaded in another CUDA context than the storage's");
        }
        this.catalog = catalog;
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
        this.scratch = new Staging(context);
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
            to.version++;
            stream.synchronize(); // the staging buffer is reused by the next call
        }
    }

    /** The kernels for {@code headDim} and {@code bits}, loaded on first use; caller holds the lock. */
    CalibQuantKernels kernels(int headDim, int bits) {
        return kernels.computeIfAbsent(headDim * 16 + bits, key -> new CalibQuantKernels(catalog, headDim, bits));
    }

    /** Whether the shipped kernels quantize this prefill where it lies: fp16 rows, head dim 64/128, their configs. */
    private boolean quantizesOnGpu(LayerPrefill p) {
        if (catalog == null || p.dtype() != DType.FP16 || !DeviceKvCache.kernelsTakeHeadDim(p.headDim())) {
            return false;
        }
        QuantConfig c = p.quantConfig();
        // quantize_pack clips toward zero, as the paper does; a midpoint clip is quantized on the CPU and uploaded
        return p.spans().isEmpty()
                || (c.clipAnchor() == ClipAnchor.ZERO
                        && DeviceKvCache.unsupportedSpans(c.bits(), c.valueBits(), c.keyGranularity(),
                                c.valueGranularity(), c.paramType(), c.wideKeyChannels()).isEmpty());
    }

    /**
     * Uploads the layer's keys and values once, copies the full-precision rows on the device, and quantizes every
     * span on the GPU in one {@code quantize_pack} launch, straight into the spans' pairs (the layout
     * {@link ManagedTables} reads). Layouts the kernels do not handle take the CPU quantizer and {@link #write}.
     * Returns once the work is done (its staging buffers are reused by the next call).
     */
    @SuppressWarnings("try") // an NVTX range opened for its scope, never read
    @Override
    public void storePrefill(LayerPrefill p) {
        if (!quantizesOnGpu(p)) {
            KvStorage.super.storePrefill(p);
            return;
        }
        int kvh = p.kvHeads();
        int d = p.headDim();
        long bytes = (long) kvh * p.promptTokens() * d * 2;
        if (p.keys().byteSize() != bytes || p.values().byteSize() != bytes) {
            throw new IllegalArgumentException("prefill keys and values hold " + p.keys().byteSize() + " and "
                    + p.values().byteSize() + " bytes; expected fp16 [" + kvh + "][" + p.promptTokens() + "][" + d
                    + "] = " + bytes);
        }
        try (Nvtx.Range r = Nvtx.range(prefillRange)) {
            synchronized (this) {
                checkOpen("store a prefill");
                DeviceBlock fullKeys = own(p.full().keys());
                DeviceBlock fullValues = own(p.full().values());
                long fullOffset = pairOffset(fullKeys, fullValues, "full-precision");
                long fullBytes = (long) kvh * p.fullCapacity() * d * 2;
                if (fullKeys.bytes < fullBytes || fullValues.bytes < fullBytes) {
                    throw new IllegalArgumentException("full-precision blocks of " + fullKeys.bytes + " bytes cannot hold "
                            + kvh + " heads of " + p.fullCapacity() + " rows");
                }
                CalibQuantKernels k = kernels(d, p.spans().isEmpty() ? 1 : p.quantConfig().bits());
                // the plan first: it can refuse the spans, and nothing may be queued by then
                QuantizePlan plan = null;
                long scaleBytes = ManagedTables.scaleBytes(kvh, d);
                if (!p.spans().isEmpty()) {
                    List<QuantizePlan.Span> work = new ArrayList<>();
                    for (LayerPrefill.SpanTarget t : p.spans()) {
                        DeviceBlock keys = own(t.blocks().keys());
                        DeviceBlock values = own(t.blocks().values());
                        long o = pairOffset(keys, values, "visual span " + t.span());
                        LayerPrefill.SpanPart part = LayerPrefill.spanPart(p.quantConfig(), true, kvh,
                                t.span().length(), d);
                        if (part.scaleBytes() != scaleBytes || keys.bytes < part.bytes() || values.bytes < part.bytes()) {
                            throw new IllegalArgumentException("visual span " + t.span() + " blocks of " + keys.bytes
                                    + " bytes do not hold the per-channel layout of " + part.bytes() + " bytes");
                        }
                        TokenSpan span = t.span();
                        work.add(new QuantizePlan.Span(0, p.promptTokens(), span.start(), span.length(),
                                o + 2 * scaleBytes, o / 4));
                    }
                    plan = k.planQuantize(work, kvh);
                }
                DeviceBuffer kin = scratch.device("prefill keys", bytes);
                DeviceBuffer vin = scratch.device("prefill values", bytes);
                kin.copyFrom(p.keys(), 0, 0, bytes);
                vin.copyFrom(p.values(), 0, 0, bytes);
                try {
                    for (RowCopy rows : p.gapCopies()) {
                        for (RowRuns.Run run : RowRuns.of(rows.sourceOffset(), rows.sourcePitch(),
                                fullOffset + rows.targetOffset(), rows.targetPitch(), rows.rowBytes(), rows.rows())) {
                            planes[0].copyFromAsync(kin, run.source(), run.target(), run.bytes(), stream);
                            planes[1].copyFromAsync(vin, run.source(), run.target(), run.bytes(), stream);
                        }
                    }
                    if (plan != null) {
                        PinnedHostBuffer tab = scratch.pinned("quantize tables", plan.tableBytes());
                        plan.writeTables(tab.segment());
                        DeviceBuffer devTab = scratch.device("quantize tables", plan.tableBytes());
                        devTab.copyFromAsync(tab, 0, 0, plan.tableBytes(), stream);
                        k.quantizePack(plan, kin, vin, cachePointers(scaleBytes), devTab, 0,
                                scratch.device("quantize scratch", plan.scratchBytes()), p.quantConfig().keyClip(),
                                p.quantConfig().valueClip(), stream);
                    }
                    for (LayerPrefill.SpanTarget t : p.spans()) {
                        own(t.blocks().keys()).version++;
                        own(t.blocks().values()).version++;
                    }
                    fullKeys.version++;
                    fullValues.version++;
                } catch (RuntimeException | Error e) {
                    stream.synchronizeAfter(e); // queued copies read the pinned tables the next call rewrites
                    throw e;
                }
                stream.synchronize();
            }
        }
    }

    /**
     * Appends the rows in one upload (keys, values and the kernel's table together, through pinned memory) and one
     * {@code append_token} launch; other layouts, or a storage without kernels, write them one by one.
     */
    @Override
    public void appendRows(MemorySegment keys, MemorySegment values, int kvHeads, long rowBytes,
            List<RowAppend> appends) {
        int d = (int) (rowBytes / 2);
        if (catalog == null || rowBytes % 2 != 0 || !DeviceKvCache.kernelsTakeHeadDim(d)) { // fp16 rows of the kernels' D
            KvStorage.super.appendRows(keys, values, kvHeads, rowBytes, appends);
            return;
        }
        int n = appends.size();
        long itemBytes = kvHeads * rowBytes;
        long bytes = n * itemBytes;
        if (keys.byteSize() != bytes || values.byteSize() != bytes) {
            throw new IllegalArgumentException("appended keys and values hold " + keys.byteSize() + " and "
                    + values.byteSize() + " bytes; expected " + n + " × " + kvHeads + " rows of " + rowBytes + " bytes");
        }
        if (n == 0) {
            return;
        }
        long tableBytes = 8L * CalibQuantKernels.SEQ_COLS * n;
        synchronized (this) {
            checkOpen("append rows");
            long[] offsets = new long[n];
            for (int i = 0; i < n; i++) {
                RowAppend a = appends.get(i);
                DeviceBlock k = own(a.full().keys());
                DeviceBlock v = own(a.full().values());
                offsets[i] = pairOffset(k, v, "full-precision");
                if (k.bytes < kvHeads * a.capacity() * rowBytes || v.bytes < kvHeads * a.capacity() * rowBytes) {
                    throw new IllegalArgumentException("full-precision blocks of " + k.bytes + " bytes cannot hold "
                            + kvHeads + " heads of " + a.capacity() + " rows of " + rowBytes + " bytes");
                }
            }
            CalibQuantKernels kernels = kernels(d, 1);
            PinnedHostBuffer stage = scratch.pinned("append", 2 * bytes + tableBytes);
            MemorySegment host = stage.segment();
            MemorySegment.copy(keys, 0, host, 0, bytes);
            MemorySegment.copy(values, 0, host, bytes, bytes);
            for (int i = 0; i < n; i++) {
                RowAppend a = appends.get(i);
                long base = 2 * bytes + 8L * CalibQuantKernels.SEQ_COLS * i;
                host.set(ValueLayout.JAVA_LONG_UNALIGNED, base, offsets[i] / 2);
                host.set(ValueLayout.JAVA_LONG_UNALIGNED, base + 8, a.row());
                host.set(ValueLayout.JAVA_LONG_UNALIGNED, base + 16, a.capacity());
                for (int c = 3; c < CalibQuantKernels.SEQ_COLS; c++) {
                    host.set(ValueLayout.JAVA_LONG_UNALIGNED, base + 8L * c, 0);
                }
            }
            DeviceBuffer dev = scratch.device("append", 2 * bytes + tableBytes);
            try {
                dev.copyFromAsync(stage, 0, 0, 2 * bytes + tableBytes, stream);
                kernels.appendToken(planes[0], planes[1], new DevicePointer(dev, 0), new DevicePointer(dev, bytes),
                        new DevicePointer(dev, 2 * bytes), n, kvHeads, stream);
                for (RowAppend a : appends) {
                    own(a.full().keys()).version++;
                    own(a.full().values()).version++;
                }
            } catch (RuntimeException | Error e) {
                stream.synchronizeAfter(e); // the queued upload reads the pinned stage the next call rewrites
                throw e;
            }
            stream.synchronize();
        }
    }

    /** The decode and quantize kernels' eight cache bases over the planes (see {@link ManagedTables}). */
    CachePointers cachePointers(long scaleBytes) {
        DevicePointer keys = new DevicePointer(planes[0], 0);
        DevicePointer values = new DevicePointer(planes[1], 0);
        return new CachePointers(keys, values, keys, values, keys, new DevicePointer(planes[0], scaleBytes), values,
                new DevicePointer(planes[1], scaleBytes));
    }

    /** The offset a pair's key block (plane 0) and value block (plane 1) share. */
    private static long pairOffset(DeviceBlock keys, DeviceBlock values, String what) {
        if (keys.plane != 0 || values.plane != 1 || keys.range != values.range) {
            throw new IllegalArgumentException(what + " blocks " + keys.label + " and " + values.label
                    + " are not one pair of this storage");
        }
        return keys.range.offset;
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
            to.version++;
        }
    }

    /** Any device storage: on another GPU through the driver's peer copy (direct where peer access is granted). */
    @Override
    public boolean canCopyFrom(KvStorage other) {
        return other instanceof DeviceStorage;
    }

    /**
     * Copies a block of another device storage (its own context and stream, maybe another GPU) into one of this
     * storage: both streams are drained first (the source's writes are done; this block's zero-fill is not still
     * queued behind the copy), then {@code cuMemcpyPeer}, complete on return. Locks both storages in a JVM-wide order.
     */
    @Override
    public void copyFrom(KvStorage other, StorageBlock source, StorageBlock target) {
        if (!(other instanceof DeviceStorage from)) {
            throw new UnsupportedOperationException(name() + " cannot copy blocks of " + other.name() + " directly");
        }
        DeviceStorage first = from.lockOrder < lockOrder ? from : this;
        DeviceStorage second = first == this ? from : this;
        synchronized (first) {
            synchronized (second) {
                DeviceBlock src = from.own(source);
                DeviceBlock to = own(target);
                if (src.bytes != to.bytes) {
                    throw new IllegalArgumentException("copying block " + source.label() + " (" + src.bytes
                            + " bytes) into block " + target.label() + " (" + to.bytes + " bytes): sizes differ");
                }
                if (from != this) {
                    from.stream.synchronize();
                }
                stream.synchronize();
                planes[to.plane].copyFromPeer(from.planes[src.plane], src.range.offset, to.range.offset, src.bytes);
                to.version++;
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

    /** The pinned buffer host rows pass through, at least {@code bytes}, reused across calls; caller holds the lock. */
    private PinnedHostBuffer staging(long bytes) {
        return scratch.pinned("host rows", bytes);
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
     * The blocks {@code segments} lie in, with their write counts now: a prepared step asks it, at every launch,
     * whether its sequences were written or freed since. Caller holds the lock.
     *
     * @throws IllegalArgumentException when a segment is not in a live block of this storage
     */
    Watch watch(List<MemorySegment> segments) {
        DeviceBlock[] blocks = new DeviceBlock[segments.size()];
        long[] versions = new long[blocks.length];
        for (int i = 0; i < blocks.length; i++) {
            blocks[i] = live.get(segments.get(i).scope());
            if (blocks[i] == null) {
                throw new IllegalArgumentException("a segment of " + segments.get(i).byteSize() + " bytes is not in a "
                        + "live block of device storage " + name);
            }
            versions[i] = blocks[i].version;
        }
        return new Watch(blocks, versions);
    }

    /** Blocks and the write counts they had when watched. */
    final class Watch {
        private final DeviceBlock[] blocks;
        private final long[] versions;

        private Watch(DeviceBlock[] blocks, long[] versions) {
            this.blocks = blocks;
            this.versions = versions;
        }

        /** Whether every block is still open and unwritten since; caller holds the storage's lock. */
        boolean unchanged() {
            for (int i = 0; i < blocks.length; i++) {
                if (!blocks[i].open || blocks[i].version != versions[i]) {
                    return false;
                }
            }
            return true;
        }
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
            parts.addAll(q.segments());
        }
        MemorySegment[] host = download(parts, arena);
        List<QuantizedSpan> spans = new ArrayList<>();
        int p = 2;
        for (QuantizedSpan q : view.visualSpans()) {
            int n = q.segments().size();
            spans.add(q.withSegments(q.kvHeads(), List.of(host).subList(p, p + n)));
            p += n;
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
        Closer closer = new Closer();
        if (!leaked.isEmpty()) { // the leak report leads; failures while freeing are suppressed by it
            closer.add(new IllegalStateException("device storage " + name + " closed with " + leaked.size()
                    + " blocks still open, now freed: " + String.join(", ", leaked)));
        }
        closer.close(stream::synchronize); // queued copies may still read or write the planes
        closer.close(scratch);
        closer.close(planes[1]);
        closer.close(planes[0]);
        closer.close(stream);
        closer.rethrow();
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
        /** Counts writes into the block, so a prepared decode step can tell that its tables went stale. */
        private long version; // guarded by the storage's lock

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
