package dev.calibquant.gpu;

import dev.calibquant.cache.CacheLeakException;
import dev.calibquant.cache.CacheMemoryLimitException;
import dev.calibquant.cache.MemoryUsage;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.CudaStream;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.cuda.PinnedHostBuffer;
import dev.calibquant.kernels.CalibQuantKernels;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.kernels.QuantizePlan;
import dev.calibquant.profiling.Nvtx;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.NonFiniteInputException;
import dev.calibquant.quant.QuantConfig;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * A KV cache in device memory, laid out for the CalibQuant kernels: full-precision keys and values (fp16) in one
 * pair of parallel pools, packed visual codes in another, per-channel scales in a fourth. Sequences reserve their
 * regions for every layer when created (prompt plus the tokens they may generate), so a decode step never
 * allocates; a reservation that does not fit is refused whole with a {@link CacheMemoryLimitException}.
 *
 * <p>At the end of prefill {@link #fill} uploads a layer's keys and values, copies the non-visual tokens into the
 * full-precision block and quantizes each visual span on the GPU ({@code quantize_pack}). {@link #append} adds one
 * generated token per sequence in one launch. An fp16 cache ({@code config == null}) keeps every token in full
 * precision: the same layout for the fp16 baseline.
 *
 * <p>Thread-safety: every method is synchronized on the cache; its work is queued on the cache's own stream.
 */
public final class GpuKvCache implements AutoCloseable {

    /** Pool sizes, in tokens summed over sequences and layers. */
    public record Capacity(long fullPrecisionTokens, long visualTokens, long visualSpans) {
        public Capacity {
            if (fullPrecisionTokens <= 0 || visualTokens < 0 || visualSpans < 0) {
                throw new IllegalArgumentException("capacity must be positive: " + fullPrecisionTokens + " full-precision tokens, "
                        + visualTokens + " visual tokens, " + visualSpans + " spans");
            }
        }
    }

    private final CudaContext context;
    private final ModelGeometry geometry;
    private final QuantConfig config;
    private final CalibQuantKernels kernels;
    private final CudaStream stream;
    private final ParallelPool full;   // K, V: fp16
    private final ParallelPool codes;  // K, V codes: bytes
    private final ParallelPool scales; // σK, αK, σV, αV: fp32
    private final Map<Long, GpuSequence> open = new LinkedHashMap<>();
    private final Staging staging;
    private final Nvtx.Name prefillRange = Nvtx.rangeName(Nvtx.PREFILL);
    private long nextId;
    private boolean closed;

    /**
     * @param config the quantization (bits 1, 2 or 4; per-channel statistics), or {@code null} for an fp16 cache
     */
    public GpuKvCache(CudaContext context, KernelCatalog catalog, ModelGeometry geometry, QuantConfig config,
            Capacity capacity) {
        this.context = Objects.requireNonNull(context, "context");
        this.geometry = Objects.requireNonNull(geometry, "geometry");
        this.config = config;
        Objects.requireNonNull(capacity, "capacity");
        int d = geometry.headDim();
        if (d != 64 && d != 128) {
            throw new InvalidShapeException("the GPU kernels are compiled for head dim 64 and 128, not " + d);
        }
        if (config != null) {
            if (config.bits() == 8) {
                throw new IllegalArgumentException("the GPU decode kernels handle 1, 2 and 4 bits; 8-bit visual KV runs on the CPU path");
            }
            if (config.keyGranularity() != Granularity.PER_CHANNEL || config.valueGranularity() != Granularity.PER_CHANNEL) {
                throw new IllegalArgumentException("the GPU kernels implement per-channel statistics (the method); "
                        + config.keyGranularity() + "/" + config.valueGranularity() + " runs on the CPU path");
            }
        }
        this.kernels = new CalibQuantKernels(catalog, d, config == null ? 1 : config.bits());
        if (geometry.groupSize() > kernels.maxGroup()) {
            throw new InvalidShapeException("GQA group of " + geometry.groupSize() + " query heads per KV head; the kernels handle up to "
                    + kernels.maxGroup());
        }
        int kvh = geometry.kvHeads();
        List<AutoCloseable> made = new ArrayList<>();
        try {
            stream = context.createStream();
            made.add(stream);
            full = new ParallelPool(context, "full-precision K/V", capacity.fullPrecisionTokens() * kvh * d, 2, 2);
            made.add(full);
            long visualRows = config == null ? 0 : capacity.visualTokens();
            codes = new ParallelPool(context, "visual codes", Math.max(1, visualRows * kvh * rowBytes()), 1, 2);
            made.add(codes);
            scales = new ParallelPool(context, "visual scales", Math.max(1, capacity.visualSpans() * kvh * d), 4, 4);
            made.add(scales);
            staging = new Staging(context);
        } catch (RuntimeException e) {
            for (AutoCloseable c : made.reversed()) {
                try {
                    c.close();
                } catch (Exception suppressed) {
                    e.addSuppressed(suppressed);
                }
            }
            throw e;
        }
    }

    public ModelGeometry geometry() {
        return geometry;
    }

    /** The quantization, or {@code null} for an fp16 cache. */
    public QuantConfig config() {
        return config;
    }

    CalibQuantKernels kernels() {
        return kernels;
    }

    CudaStream stream() {
        return stream;
    }

    CudaContext context() {
        return context;
    }

    ParallelPool fullPool() {
        return full;
    }

    ParallelPool codePool() {
        return codes;
    }

    ParallelPool scalePool() {
        return scales;
    }

    int rowBytes() {
        return geometry.headDim() * (config == null ? 16 : config.bits()) / 8;
    }

    private long fullElements(int capacity) {
        return (long) geometry.kvHeads() * capacity * geometry.headDim();
    }

    private long codeBytes(int tokens) {
        return (long) geometry.kvHeads() * tokens * rowBytes();
    }

    private long scaleElements() {
        return (long) geometry.kvHeads() * geometry.headDim();
    }

    /**
     * Reserves a sequence for every layer: {@code visualSpans} (sorted, in range, non-overlapping) are quantized at
     * fill time in a quantized cache, and stored like other tokens in an fp16 cache. All or nothing.
     */
    public synchronized GpuSequence createSequence(int promptTokens, List<TokenSpan> visualSpans, int maxNewTokens) {
        checkOpen();
        if (promptTokens <= 0) {
            throw new InvalidShapeException("a sequence needs at least one prompt token, got " + promptTokens);
        }
        if (maxNewTokens < 0) {
            throw new IllegalArgumentException("maxNewTokens must be >= 0, got " + maxNewTokens);
        }
        List<TokenSpan> spans = TokenSpan.sortedWithin(visualSpans, promptTokens);
        List<TokenSpan> quantized = config == null ? List.of() : spans;
        int visual = quantized.stream().mapToInt(TokenSpan::length).sum();
        int capacity = Math.addExact(promptTokens - visual, maxNewTokens);
        if (capacity == 0) {
            capacity = 1; // keeps the region non-empty; nothing is stored in it until a token is appended
        }
        GpuSequence s = new GpuSequence(this, nextId, promptTokens, quantized, capacity, geometry.layers());
        int layers = geometry.layers();
        List<Runnable> undo = new ArrayList<>();
        try {
            for (int l = 0; l < layers; l++) {
                long f = full.allocate(fullElements(capacity), "sequence " + nextId + " layer " + l + " full-precision K/V");
                s.fullOffset[l] = f;
                undo.add(() -> full.release(f, fullElements(s.fullCapacity())));
                for (int i = 0; i < quantized.size(); i++) {
                    int tokens = quantized.get(i).length();
                    long c = codes.allocate(codeBytes(tokens), "sequence " + nextId + " layer " + l + " visual codes");
                    s.codeOffset[l][i] = c;
                    undo.add(() -> codes.release(c, codeBytes(tokens)));
                    long sc = scales.allocate(scaleElements(), "sequence " + nextId + " layer " + l + " visual scales");
                    s.scaleOffset[l][i] = sc;
                    undo.add(() -> scales.release(sc, scaleElements()));
                }
            }
        } catch (RuntimeException e) {
            undo.reversed().forEach(Runnable::run);
            throw e;
        }
        open.put(nextId++, s);
        return s;
    }

    synchronized void free(GpuSequence s) {
        if (!s.markClosed()) {
            return;
        }
        open.remove(s.id());
        if (closed) {
            return; // the pools are gone already
        }
        for (int l = 0; l < geometry.layers(); l++) {
            full.release(s.fullOffset[l], fullElements(s.fullCapacity()));
            for (int i = 0; i < s.quantizedSpans().size(); i++) {
                codes.release(s.codeOffset[l][i], codeBytes(s.quantizedSpans().get(i).length()));
                scales.release(s.scaleOffset[l][i], scaleElements());
            }
        }
    }

    /**
     * End of prefill for one layer: {@code keys} and {@code values} are fp16 {@code [kvHeads][promptTokens][headDim]}
     * (post-RoPE keys). Validated (size, every element finite) before anything is written.
     */
    public synchronized void fill(GpuSequence s, int layer, MemorySegment keys, MemorySegment values) {
        checkOpen();
        checkSequence(s, layer);
        if (s.filled[layer]) {
            throw new IllegalStateException(s + " layer " + layer + " is already filled");
        }
        int kvh = geometry.kvHeads();
        int d = geometry.headDim();
        int prompt = s.promptTokens();
        long bytes = 2L * kvh * prompt * d;
        requireSize("keys", keys, bytes);
        requireSize("values", values, bytes);
        requireFiniteFp16("keys", keys, layer, prompt, true);
        requireFiniteFp16("values", values, layer, prompt, true);
        try (Nvtx.Range r = Nvtx.range(prefillRange)) {
            upload(s, layer, keys, values, bytes);
        }
    }

    private void upload(GpuSequence s, int layer, MemorySegment keys, MemorySegment values, long bytes) {
        int kvh = geometry.kvHeads();
        int d = geometry.headDim();
        int prompt = s.promptTokens();
        List<TokenSpan> spans = s.quantizedSpans();
        // the quantize plan first: it can refuse the spans, and nothing may be queued on the stream by then
        QuantizePlan plan = null;
        if (!spans.isEmpty()) {
            List<QuantizePlan.Span> work = new ArrayList<>();
            for (int i = 0; i < spans.size(); i++) {
                TokenSpan span = spans.get(i);
                work.add(new QuantizePlan.Span(0, prompt, span.start(), span.length(), s.codeOffset[layer][i],
                        s.scaleOffset[layer][i]));
            }
            plan = kernels.planQuantize(work, kvh);
        }
        int dst = 0;
        try {
            DeviceBuffer kin = staging.device("keys in", bytes);
            DeviceBuffer vin = staging.device("values in", bytes);
            kin.copyFrom(keys, 0, 0, bytes);
            vin.copyFrom(values, 0, 0, bytes);
            // Non-visual tokens, in order, into the full-precision block: one copy per head per gap between spans.
            long rowBytes16 = 2L * d;
            int at = 0;
            for (int i = 0; i <= spans.size(); i++) {
                int gapEnd = i < spans.size() ? spans.get(i).start() : prompt;
                int n = gapEnd - at;
                if (n > 0) {
                    for (int h = 0; h < kvh; h++) {
                        long src = ((long) h * prompt + at) * rowBytes16;
                        long to = 2 * s.fullOffset[layer] + ((long) h * s.fullCapacity() + dst) * rowBytes16;
                        full.buffer(0).copyFromAsync(kin, src, to, n * rowBytes16, stream);
                        full.buffer(1).copyFromAsync(vin, src, to, n * rowBytes16, stream);
                    }
                    dst += n;
                }
                if (i < spans.size()) {
                    at = spans.get(i).end();
                }
            }
            if (plan != null) {
                PinnedHostBuffer tab = staging.pinned("quantize tables", plan.tableBytes());
                plan.writeTables(tab.segment());
                DeviceBuffer devTab = staging.device("quantize tables", plan.tableBytes());
                devTab.copyFromAsync(tab, 0, 0, plan.tableBytes(), stream);
                kernels.quantizePack(plan, kin, vin, codes.buffer(0), codes.buffer(1), scales.buffer(0),
                        scales.buffer(1), scales.buffer(2), scales.buffer(3), devTab, 0,
                        staging.device("quantize scratch", plan.scratchBytes()), config.keyClip(), config.valueClip(),
                        stream);
            }
            stream.synchronize();
        } catch (RuntimeException | Error e) {
            stream.synchronizeAfter(e); // queued copies read the pinned tables the next call rewrites
            throw e;
        }
        s.fullLength[layer] = dst;
        s.filled[layer] = true;
    }

    /**
     * Appends one generated token to {@code layer} of every sequence in {@code batch}: {@code keys} and
     * {@code values} are fp16 {@code [batch][kvHeads][headDim]}. Refused whole if any sequence has used up the
     * tokens it reserved.
     */
    public synchronized void append(List<GpuSequence> batch, int layer, MemorySegment keys, MemorySegment values) {
        checkOpen();
        if (batch.isEmpty()) {
            throw new IllegalArgumentException("append to an empty batch");
        }
        int kvh = geometry.kvHeads();
        int d = geometry.headDim();
        long bytes = 2L * batch.size() * kvh * d;
        requireSize("keys", keys, bytes);
        requireSize("values", values, bytes);
        for (GpuSequence s : batch) {
            checkSequence(s, layer);
            if (!s.filled[layer]) {
                throw new IllegalStateException(s + " layer " + layer + " is not filled yet");
            }
            if (s.fullLength[layer] >= s.fullCapacity()) {
                throw new CacheMemoryLimitException(s + " layer " + layer + " has used the " + s.fullCapacity()
                        + " full-precision rows it reserved (maxNewTokens)", 2L * kvh * d * 2, 0, 0);
            }
        }
        if (batch.stream().distinct().count() != batch.size()) {
            throw new IllegalArgumentException("a sequence appears twice in the batch");
        }
        requireFiniteFp16("keys", keys, layer, batch.size(), false);
        requireFiniteFp16("values", values, layer, batch.size(), false);
        DeviceBuffer kn = staging.device("keys in", bytes);
        DeviceBuffer vn = staging.device("values in", bytes);
        kn.copyFrom(keys, 0, 0, bytes);
        vn.copyFrom(values, 0, 0, bytes);
        long tableBytes = 8L * CalibQuantKernels.SEQ_COLS * batch.size();
        PinnedHostBuffer tab = staging.pinned("table", tableBytes);
        MemorySegment t = tab.segment();
        for (int b = 0; b < batch.size(); b++) {
            GpuSequence s = batch.get(b);
            long base = (long) b * CalibQuantKernels.SEQ_COLS;
            t.setAtIndex(ValueLayout.JAVA_LONG, base, s.fullOffset[layer]);
            t.setAtIndex(ValueLayout.JAVA_LONG, base + 1, s.fullLength[layer]);
            t.setAtIndex(ValueLayout.JAVA_LONG, base + 2, s.fullCapacity());
            for (int c = 3; c < CalibQuantKernels.SEQ_COLS; c++) {
                t.setAtIndex(ValueLayout.JAVA_LONG, base + c, 0);
            }
        }
        DeviceBuffer devTab = staging.device("table", tableBytes);
        try {
            devTab.copyFromAsync(tab, 0, 0, tableBytes, stream);
            kernels.appendToken(full.buffer(0), full.buffer(1), kn, vn, devTab, 0, batch.size(), kvh, stream);
            stream.synchronize();
        } catch (RuntimeException | Error e) {
            stream.synchronizeAfter(e); // the queued table upload reads pinned memory the next call rewrites
            throw e;
        }
        for (GpuSequence s : batch) {
            s.fullLength[layer]++;
        }
    }

    /**
     * A one-layer sequence holding exactly what a host {@link dev.calibquant.cache.LayerKvView} holds (fp16 rows,
     * quantized spans already packed): uploaded, not re-quantized. The caller checked the view's format.
     */
    synchronized GpuSequence load(dev.calibquant.cache.LayerKvView view) {
        checkOpen();
        int visual = 0;
        List<TokenSpan> spans = new ArrayList<>();
        int at = view.fullTokens();
        for (var q : view.visualSpans()) {
            spans.add(new TokenSpan(at, at + q.tokens()));
            at += q.tokens();
            visual += q.tokens();
        }
        GpuSequence s = createSequence(view.fullTokens() + visual, spans, 0);
        try {
            int kvh = geometry.kvHeads();
            long rowBytes16 = 2L * geometry.headDim();
            long rows = view.fullTokens();
            for (int h = 0; h < kvh && rows > 0; h++) {
                long src = (long) h * view.fullCapacity() * rowBytes16;
                long dst = 2 * s.fullOffset[0] + (long) h * s.fullCapacity() * rowBytes16;
                full.buffer(0).copyFrom(view.fullKeys(), src, dst, rows * rowBytes16);
                full.buffer(1).copyFrom(view.fullValues(), src, dst, rows * rowBytes16);
            }
            for (int i = 0; i < spans.size(); i++) {
                var q = view.visualSpans().get(i);
                codes.buffer(0).copyFrom(q.keyCodes(), 0, s.codeOffset[0][i], q.keyCodes().byteSize());
                codes.buffer(1).copyFrom(q.valueCodes(), 0, s.codeOffset[0][i], q.valueCodes().byteSize());
                MemorySegment[] parts = {q.keyScale(), q.keyOffset(), q.valueScale(), q.valueOffset()};
                for (int j = 0; j < 4; j++) {
                    scales.buffer(j).copyFrom(parts[j], 0, 4 * s.scaleOffset[0][i], parts[j].byteSize());
                }
            }
            s.fullLength[0] = view.fullTokens();
            s.filled[0] = true;
            return s;
        } catch (RuntimeException e) {
            free(s);
            throw e;
        }
    }

    void checkSequence(GpuSequence s, int layer) {
        Objects.requireNonNull(s, "sequence");
        s.checkOpen();
        if (open.get(s.id()) != s) {
            throw new IllegalArgumentException(s + " belongs to another cache");
        }
        Objects.checkIndex(layer, geometry.layers());
    }

    private static void requireSize(String what, MemorySegment seg, long bytes) {
        if (seg.byteSize() != bytes) {
            throw new InvalidShapeException(what + " hold " + seg.byteSize() + " bytes; expected " + bytes
                    + " (fp16 [kvHeads][tokens][headDim])");
        }
    }

    /**
     * fp16 is non-finite exactly when its exponent bits are all ones. {@code headMajor}: rows are
     * {@code [kvHeads][rows]} (prefill); otherwise {@code [rows][kvHeads]} (one token per sequence).
     */
    private void requireFiniteFp16(String what, MemorySegment seg, int layer, int rows, boolean headMajor) {
        long n = seg.byteSize() / 2;
        int d = geometry.headDim();
        int kvh = geometry.kvHeads();
        long i = Fp16Check.firstNonFinite(seg, n);
        if (i >= 0) {
            long row = i / d;
            int head = (int) (headMajor ? row / rows : row % kvh);
            int token = (int) (headMajor ? row % rows : row / kvh);
            throw new NonFiniteInputException(what + " of layer " + layer + (headMajor ? "" : " (token = batch index)"),
                    head, token, (int) (i % d), Fp16Check.valueAt(seg, i));
        }
    }

    /** Memory held by one sequence, with what fp16 would need for the same tokens. */
    MemoryUsage sequenceUsage(GpuSequence s) {
        int kvh = geometry.kvHeads();
        int d = geometry.headDim();
        long layers = geometry.layers();
        long fullBytes = layers * 2 * 2 * ParallelPool.roundUp(fullElements(s.fullCapacity()));
        long codeBytes = 0;
        long scaleBytes = 0;
        for (TokenSpan span : s.quantizedSpans()) {
            codeBytes += layers * 2 * ParallelPool.roundUp(codeBytes(span.length()));
            scaleBytes += layers * 4 * 4 * ParallelPool.roundUp(scaleElements());
        }
        long fp16 = layers * 2L * kvh * d * 2 * (s.promptTokens() + s.fullCapacity() - (s.promptTokens() - s.visualTokens()));
        return new MemoryUsage(fullBytes, codeBytes, scaleBytes, fp16);
    }

    /** Memory held by all open sequences. */
    public synchronized MemoryUsage usage() {
        return open.values().stream().map(this::sequenceUsage).reduce(MemoryUsage.ZERO, MemoryUsage::plus);
    }

    /** Device bytes the pools reserve, used or not. */
    public long capacityBytes() {
        return full.capacityBytes() + codes.capacityBytes() + scales.capacityBytes();
    }

    public synchronized int openSequences() {
        return open.size();
    }

    private void checkOpen() {
        if (closed) {
            throw new IllegalStateException("GPU KV cache is closed");
        }
    }

    /**
     * Frees the pools and everything in them. Sequences still open are closed and reported with a
     * {@link CacheLeakException}. Idempotent.
     */
    @Override
    public synchronized void close() {
        if (closed) {
            return;
        }
        List<CacheLeakException.LeakedSequence> leaked = new ArrayList<>();
        for (GpuSequence s : List.copyOf(open.values())) {
            leaked.add(new CacheLeakException.LeakedSequence(s.id(), sequenceUsage(s)));
            free(s);
        }
        closed = true;
        RuntimeException failure = null;
        for (AutoCloseable c : new AutoCloseable[] {staging, scales, codes, full, stream}) {
            try {
                c.close();
            } catch (Exception e) {
                if (failure == null) {
                    failure = e instanceof RuntimeException r ? r : new IllegalStateException(e);
                } else {
                    failure.addSuppressed(e);
                }
            }
        }
        if (!leaked.isEmpty()) {
            CacheLeakException leak = new CacheLeakException(leaked);
            if (failure != null) {
                leak.addSuppressed(failure);
            }
            throw leak;
        }
        if (failure != null) {
            throw failure;
        }
    }
}
