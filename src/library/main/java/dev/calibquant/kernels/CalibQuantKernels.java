package dev.calibquant.kernels;

import dev.calibquant.cuda.CudaStream;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.cuda.UnsupportedDeviceException;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;

/**
 * Typed launches of the CalibQuant kernels for one head dimension and bit width: the only place that knows their
 * argument order and grids (see {@code ptx/README.md} for the tables they read).
 *
 * <p>Table rows are int64. {@code seq_tab}: fp_off, fp_len, fp_cap, q_off, work_first, work_count.
 * {@code span_tab}: code_off, tokens, scale_off, mm_first, mm_count. {@code work_tab}: seq, span (−1 for the
 * full-precision block), t0, tn. {@code mm_tab}: seq, span, t0, tn. {@code qs_tab}: src_off, src_cap, src_t0,
 * tokens, code_off, scale_off, chunk_first, chunk_count (see {@link QuantizePlan}). Offsets count elements of the
 * buffer they index, and are multiples of 16.
 */
public final class CalibQuantKernels {
    public static final int SEQ_COLS = 6;
    public static final int SPAN_COLS = 5;
    public static final int WORK_COLS = 4;
    public static final int MM_COLS = 4;
    public static final int QS_COLS = 8;

    private final KernelCatalog catalog;
    private final int headDim;
    private final int bits;

    public CalibQuantKernels(KernelCatalog catalog, int headDim, int bits) {
        this.catalog = catalog;
        this.headDim = headDim;
        this.bits = bits;
    }

    public int headDim() {
        return headDim;
    }

    public int bits() {
        return bits;
    }

    /** Largest GQA group (query heads per KV head) the decode kernels handle: their head-slot count. */
    public int maxGroup() {
        return fp16Decode().constexpr("HS");
    }

    /** Token block of the decode kernels: work items are best cut at multiples of it. */
    public int decodeBlock() {
        return fp16Decode().constexpr("BN");
    }

    // Looked up once each (on first use): a decode step from Java should not search the manifest.
    private final java.util.concurrent.ConcurrentHashMap<String, Kernel> resolved = new java.util.concurrent.ConcurrentHashMap<>();

    private Kernel resolve(String key, String function, Map<String, Integer> constexprs) {
        Kernel k = resolved.get(key);
        return k != null ? k : resolved.computeIfAbsent(key, x -> catalog.find(function, constexprs));
    }

    private Kernel quantizePack() {
        return resolve("quantize_pack", "quantize_pack", Map.of("D", headDim, "BITS", bits));
    }

    private Kernel minmax(int group) {
        return resolveForGroup("minmax", "calibquant_minmax", Map.of("D", headDim, "BITS", bits), group);
    }

    private Kernel decode(int mmMode, int group) {
        return resolveForGroup("decode" + mmMode, "calibquant_decode",
                Map.of("D", headDim, "BITS", bits, "MM_MODE", mmMode), group);
    }

    /** The variant for this group, looked up once per slot count (a decode step launches through here). */
    private Kernel resolveForGroup(String key, String function, Map<String, Integer> constexprs, int group) {
        String slotKey = key + (group <= NARROW_SLOTS ? "_narrow" : "_wide");
        Kernel k = resolved.get(slotKey);
        return k != null ? k : resolved.computeIfAbsent(slotKey,
                x -> catalog.kernel(variantFor(catalog.manifest(), function, constexprs, group)));
    }

    /**
     * The variant with 4 head slots where one ships and the group fits (half the tensor-core work of 8 slots for
     * the common G = 4), else the one with 8.
     */
    static String variantFor(KernelManifest manifest, String function, Map<String, Integer> constexprs, int group) {
        return shippedFor(manifest, function, constexprs, group)
                .orElseThrow(() -> new UnsupportedDeviceException("no shipped " + function + " kernel for "
                        + constexprs + " and a group of " + group));
    }

    private static Optional<String> shippedFor(KernelManifest manifest, String function,
            Map<String, Integer> constexprs, int group) {
        Optional<String> narrow = group <= NARROW_SLOTS
                ? KernelCatalog.shipped(manifest, function, withSlots(constexprs, NARROW_SLOTS))
                : Optional.empty();
        return narrow.or(() -> KernelCatalog.shipped(manifest, function, withSlots(constexprs, WIDE_SLOTS)));
    }

    private static Map<String, Integer> withSlots(Map<String, Integer> constexprs, int slots) {
        Map<String, Integer> m = new java.util.HashMap<>(constexprs);
        m.put("HS", slots);
        return Map.copyOf(m);
    }

    private static final int NARROW_SLOTS = 4;
    private static final int WIDE_SLOTS = 8;

    /** Decode programs per SM for four-warp kernels (fp16_decode, the 2/4-bit Triton kernels). */
    public static final int FOUR_WARP_PROGRAMS_PER_SM = 2;
    // one-warp kernels (the 1-bit Gluon ones): measured best on the H200, see decodeProgramsPerSm
    private static final int ONE_WARP_PROGRAMS_PER_SM = 16;
    private static final int ONE_WARP_MAX_CHUNK = 832;

    /**
     * Decode programs a step should have per SM for this group's kernels: the one-warp Gluon kernels (1 bit) want
     * many (16 per SM measured best on the H200, chunks of ~800 tokens at B = 64), the four-warp Triton ones two.
     */
    public int decodeProgramsPerSm(int group) {
        return oneWarp(group) ? ONE_WARP_PROGRAMS_PER_SM : FOUR_WARP_PROGRAMS_PER_SM;
    }

    /** Largest visual chunk worth one program, or 0 for no limit: one-warp programs cap it (see decodeProgramsPerSm). */
    public int decodeMaxChunk(int group) {
        return oneWarp(group) ? ONE_WARP_MAX_CHUNK : 0;
    }

    private boolean oneWarp(int group) {
        return decode(1, group).target().numWarps() == 1;
    }

    /** Calibration mode of the one-launch decode: the items of a span meet at a rendezvous inside the kernel. */
    public static final int ONE_LAUNCH_MODE = 3;

    /** int32 per rendezvous slot of mode 3's {@code mm_buf} (a header slot holds the ticket counter). */
    public static final int RENDEZVOUS_SLOT_INTS = 32;

    /** Bytes of mode 3's {@code mm_buf} for this many spans: zeroed once, left zero by every launch. */
    public static long rendezvousBytes(int spans, int kvHeads) {
        return 4L * RENDEZVOUS_SLOT_INTS * (1 + (long) spans * kvHeads);
    }

    /**
     * Largest visual work item of the one-launch calibrated decode (mode 3) for this group, in tokens (its raw
     * scores stay on chip), or 0 where no such kernel ships (2 and 4 bits).
     */
    public int oneLaunchChunk(int group) {
        // asked on every planned step: the manifest is searched once per slot count
        return oneLaunchChunks.computeIfAbsent(slots(group), x -> shippedFor(catalog.manifest(), "calibquant_decode",
                Map.of("D", headDim, "BITS", bits, "MM_MODE", ONE_LAUNCH_MODE), group).isEmpty()
                        ? 0 : decode(ONE_LAUNCH_MODE, group).constexpr("CH"));
    }

    private static int slots(int group) {
        return group > NARROW_SLOTS ? WIDE_SLOTS : NARROW_SLOTS;
    }

    private final java.util.concurrent.ConcurrentHashMap<Integer, Integer> oneLaunchChunks =
            new java.util.concurrent.ConcurrentHashMap<>();
    private final java.util.concurrent.ConcurrentHashMap<Integer, Integer> oneLaunchItems =
            new java.util.concurrent.ConcurrentHashMap<>();

    /**
     * Most work items one span may have in mode 3: a quarter of the programs this GPU holds at once. The items of a
     * span wait for each other; they hold consecutive tickets, so in one launch only the newest span can wait on
     * programs not yet started. A quarter leaves those room to start even with four such launches running at once
     * (on any streams, each with its newest span waiting); the workloads here need far fewer (13 items for a span of
     * 3,328 tokens at B = 1, 7 at large B, against 528 on an H200).
     */
    public int oneLaunchMaxItems(int group) {
        return oneLaunchItems.computeIfAbsent(slots(group),
                x -> Math.max(1, decode(ONE_LAUNCH_MODE, group).residentPrograms() / 4));
    }

    private Kernel fp16Decode() {
        return resolve("fp16", "fp16_decode", Map.of("D", headDim));
    }

    private Kernel append() {
        return resolve("append", "append_token", Map.of("D", headDim));
    }

    /** Loads every variant this configuration can launch, so the first decode step pays no JIT. */
    public void preload() {
        quantizePack();
        for (int group : new int[] {NARROW_SLOTS, WIDE_SLOTS}) {
            minmax(group);
            for (int mm = 0; mm <= 2; mm++) {
                decode(mm, group);
            }
            if (oneLaunchChunk(group) > 0) {
                decode(ONE_LAUNCH_MODE, group);
            }
        }
        fp16Decode();
        append();
    }

    private volatile int quantizeResident;

    /** The launch plan of these spans for this GPU: the variant's tile, and how many of its programs fit at once. */
    public QuantizePlan planQuantize(List<QuantizePlan.Span> spans, int kvHeads) {
        Kernel k = quantizePack();
        int resident = quantizeResident;
        if (resident == 0) {
            resident = quantizeResident = k.residentPrograms();
        }
        return QuantizePlan.of(spans, kvHeads, headDim, bits, k.constexpr("BT"), resident);
    }

    /**
     * End-of-prefill quantization of every span of {@code plan}, keys and values, in one launch. {@code tables} holds
     * the plan's tables ({@link QuantizePlan#writeTables}) from byte {@code tableOffset}; {@code scratch} holds at
     * least {@link QuantizePlan#scratchBytes()}, zeroed here on {@code stream} (one memset) before the launch. Every
     * buffer size is checked first.
     */
    public void quantizePack(QuantizePlan plan, DeviceBuffer kin, DeviceBuffer vin, CachePointers cache,
            DeviceBuffer tables, long tableOffset, DeviceBuffer scratch, float clipK, float clipV, CudaStream stream) {
        Kernel k = quantizePack();
        plan.requireGeometry(headDim, bits);
        plan.requireWithin(Math.min(kin.byteSize(), vin.byteSize()) / 2,
                Math.min(bytesFrom(cache.kcode()), bytesFrom(cache.vcode())),
                Math.min(Math.min(bytesFrom(cache.ksig()), bytesFrom(cache.kalp())),
                        Math.min(bytesFrom(cache.vsig()), bytesFrom(cache.valp()))) / 4);
        requireBytes("quantize tables", tables, tableOffset, plan.tableBytes());
        requireBytes("quantize scratch", scratch, 0, plan.scratchBytes());
        if (tableOffset % 16 != 0) {
            throw new IllegalArgumentException("quantize table offset " + tableOffset + " is not 16-byte aligned");
        }
        scratch.fillAsync((byte) 0, 0, plan.scratchBytes(), stream);
        k.args().pointer(kin).pointer(vin)
                .pointer(cache.kcode().buffer(), cache.kcode().offset())
                .pointer(cache.vcode().buffer(), cache.vcode().offset())
                .pointer(cache.ksig().buffer(), cache.ksig().offset())
                .pointer(cache.kalp().buffer(), cache.kalp().offset())
                .pointer(cache.vsig().buffer(), cache.vsig().offset())
                .pointer(cache.valp().buffer(), cache.valp().offset())
                .pointer(tables, tableOffset).pointer(tables, tableOffset + plan.chunkTableOffset())
                .pointer(scratch, plan.statsOffset()).pointer(scratch).f32(clipK).f32(clipV)
                .i32(plan.kvHeads()).i32(plan.tilesPerProgram())
                .launch(plan.programs(), 1, 1, stream);
    }

    /** Bytes of a pointer's buffer from its offset on. */
    private static long bytesFrom(DevicePointer p) {
        return Math.max(0, p.buffer().byteSize() - p.offset());
    }

    private static void requireBytes(String what, DeviceBuffer buffer, long offset, long bytes) {
        if (offset < 0 || offset + bytes > buffer.byteSize()) {
            throw new IllegalArgumentException(what + ": " + bytes + " bytes from " + offset + " do not fit a buffer of "
                    + buffer.byteSize());
        }
    }

    /**
     * Writes row {@code fp_len} of every sequence of the {@code seq_tab} rows at {@code seqTable} from {@code knew} /
     * {@code vnew}, each {@code [sequences][kvHeads][headDim]} fp16.
     */
    public void appendToken(DeviceBuffer kfp, DeviceBuffer vfp, DevicePointer knew, DevicePointer vnew,
            DevicePointer seqTable, int sequences, int kvHeads, CudaStream stream) {
        long rows = 2L * sequences * kvHeads * headDim;
        if (bytesFrom(knew) < rows || bytesFrom(vnew) < rows || bytesFrom(seqTable) < 8L * SEQ_COLS * sequences) {
            throw new IllegalArgumentException("append of " + sequences + " sequences × " + kvHeads + " heads needs "
                    + rows + " bytes of keys and of values and " + 8L * SEQ_COLS * sequences + " of table");
        }
        append().args().pointer(kfp).pointer(vfp).pointer(knew.buffer(), knew.offset())
                .pointer(vnew.buffer(), vnew.offset()).pointer(seqTable.buffer(), seqTable.offset()).i32(kvHeads)
                .launch(sequences, kvHeads, 1, stream);
    }

    /** A pointer argument: byte {@code offset} of {@code buffer} (checked against its size at launch). */
    public record DevicePointer(DeviceBuffer buffer, long offset) {
        public DevicePointer {
            Objects.requireNonNull(buffer, "buffer");
            if (offset < 0) {
                throw new IllegalArgumentException("pointer offset " + offset + " is negative");
            }
        }
    }

    /**
     * The eight cache pointers of the decode kernels, each a base the tables' offsets count from. A cache whose
     * arrays do not start their own buffers (the manager's device storage: a span's scales and offsets lie at a fixed
     * distance inside one buffer) gives their offsets; one whose arrays each start a buffer of their own (the pools of
     * the benchmark's and checks' own buffers) uses {@link #atStart}.
     */
    public record CachePointers(DevicePointer kfp, DevicePointer vfp, DevicePointer kcode, DevicePointer vcode,
            DevicePointer ksig, DevicePointer kalp, DevicePointer vsig, DevicePointer valp) {
        public CachePointers {
            Objects.requireNonNull(kfp, "kfp");
            Objects.requireNonNull(vfp, "vfp");
            Objects.requireNonNull(kcode, "kcode");
            Objects.requireNonNull(vcode, "vcode");
            Objects.requireNonNull(ksig, "ksig");
            Objects.requireNonNull(kalp, "kalp");
            Objects.requireNonNull(vsig, "vsig");
            Objects.requireNonNull(valp, "valp");
        }

        /** Each array at the start of its own buffer. */
        public static CachePointers atStart(DeviceBuffer kfp, DeviceBuffer vfp, DeviceBuffer kcode, DeviceBuffer vcode,
                DeviceBuffer ksig, DeviceBuffer kalp, DeviceBuffer vsig, DeviceBuffer valp) {
            return new CachePointers(new DevicePointer(kfp, 0), new DevicePointer(vfp, 0), new DevicePointer(kcode, 0),
                    new DevicePointer(vcode, 0), new DevicePointer(ksig, 0), new DevicePointer(kalp, 0),
                    new DevicePointer(vsig, 0), new DevicePointer(valp, 0));
        }
    }

    // One launch method per kernel. Its arguments are checked as the list is built, before the driver sees any
    // (Kernel.Call: each buffer open and each offset within it, scalars finite, count and types as in the manifest).

    /** Min and max of the raw visual scores of each {@code mm_tab} chunk, per query head, into {@code mmBuf}. */
    public void minmax(DeviceBuffer q, CachePointers cache, DeviceBuffer tables, long seqOffset, long spanOffset,
            long mmOffset, DeviceBuffer mmBuf, int chunks, int kvHeads, int group, float smScale, CudaStream stream) {
        minmax(group).args().pointer(q).pointer(cache.kcode().buffer(), cache.kcode().offset())
                .pointer(cache.ksig().buffer(), cache.ksig().offset())
                .pointer(cache.kalp().buffer(), cache.kalp().offset())
                .pointer(tables, seqOffset).pointer(tables, spanOffset).pointer(tables, mmOffset).pointer(mmBuf)
                .i32(kvHeads).i32(group).f32(smScale)
                .launch(chunks, kvHeads, 1, stream);
    }

    /** One CalibQuant decode step over {@code workItems} rows of {@code work_tab}; the output is fp32. */
    public void decode(int mmMode, DeviceBuffer q, CachePointers cache, DeviceBuffer tables, long seqOffset,
            long spanOffset, long workOffset, DeviceBuffer mmBuf, DeviceBuffer partMl, DeviceBuffer partAcc,
            DeviceBuffer counters, DeviceBuffer out, int workItems, int kvHeads, int group, float smScale,
            float tauMin, float tauMax, boolean clamp, CudaStream stream) {
        decode(mmMode, group).args().pointer(q)
                .pointer(cache.kfp().buffer(), cache.kfp().offset())
                .pointer(cache.vfp().buffer(), cache.vfp().offset())
                .pointer(cache.kcode().buffer(), cache.kcode().offset())
                .pointer(cache.vcode().buffer(), cache.vcode().offset())
                .pointer(cache.ksig().buffer(), cache.ksig().offset())
                .pointer(cache.kalp().buffer(), cache.kalp().offset())
                .pointer(cache.vsig().buffer(), cache.vsig().offset())
                .pointer(cache.valp().buffer(), cache.valp().offset())
                .pointer(tables, seqOffset).pointer(tables, spanOffset).pointer(tables, workOffset).pointer(mmBuf)
                .pointer(partMl).pointer(partAcc).pointer(counters).pointer(out)
                .i32(kvHeads).i32(group).f32(smScale).f32(tauMin).f32(tauMax).i32(clamp ? 1 : 0)
                .launch(workItems, kvHeads, 1, stream);
    }

    /**
     * Flash-decoding over full-precision tokens only (the fp16 baseline on the same cache layout); of the cache only
     * {@code kfp} and {@code vfp} are read.
     */
    public void fp16Decode(DeviceBuffer q, CachePointers cache, DeviceBuffer tables, long seqOffset, long workOffset,
            DeviceBuffer partMl, DeviceBuffer partAcc, DeviceBuffer counters, DeviceBuffer out, int workItems,
            int kvHeads, int group, float smScale, CudaStream stream) {
        fp16Decode().args().pointer(q)
                .pointer(cache.kfp().buffer(), cache.kfp().offset())
                .pointer(cache.vfp().buffer(), cache.vfp().offset())
                .pointer(tables, seqOffset).pointer(tables, workOffset).pointer(partMl).pointer(partAcc)
                .pointer(counters).pointer(out)
                .i32(kvHeads).i32(group).f32(smScale)
                .launch(workItems, kvHeads, 1, stream);
    }
}
