package dev.calibquant.attention;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.quant.ChannelQuantizer;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.NonFiniteInputException;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.Objects;

/**
 * The arguments of one {@link DecodeAttention#decode} call, checked: shapes agree across the batch, every segment has
 * exactly the size its shape implies, the queries are finite. Holds the queries widened to fp32.
 */
final class DecodeInputs {
    final List<? extends LayerKvView> batch;
    final int sequences;
    final int queryHeads;
    final int kvHeads;
    final int headDim;
    final int groupSize;
    /** {@code [B][queryHeads][headDim]}. */
    final float[] queries;
    /** Whether other threads may read every cache segment (none is confined to the calling thread). */
    final boolean cacheShared;

    /** Stands for "any thread but the caller" when asking a segment who may read it; never started. */
    private static final Thread OTHER_THREAD = new Thread(() -> { });

    private DecodeInputs(List<? extends LayerKvView> batch, int queryHeads, int kvHeads, int headDim,
            float[] queries) {
        this.batch = batch;
        this.sequences = batch.size();
        this.queryHeads = queryHeads;
        this.kvHeads = kvHeads;
        this.headDim = headDim;
        this.groupSize = queryHeads / kvHeads;
        this.queries = queries;
        this.cacheShared = batch.stream().allMatch(DecodeInputs::shared);
    }

    private static boolean shared(LayerKvView view) {
        for (QuantizedSpan s : view.visualSpans()) {
            for (MemorySegment m : s.segments()) {
                if (!m.isAccessibleBy(OTHER_THREAD)) {
                    return false;
                }
            }
        }
        return view.fullKeys().isAccessibleBy(OTHER_THREAD) && view.fullValues().isAccessibleBy(OTHER_THREAD);
    }

    static DecodeInputs check(List<? extends LayerKvView> batch, MemorySegment queries, DType queryType,
            int queryHeads, MemorySegment out, boolean allowSpans) {
        Objects.requireNonNull(batch, "batch");
        Objects.requireNonNull(queries, "queries");
        Objects.requireNonNull(queryType, "queryType");
        Objects.requireNonNull(out, "out");
        if (batch.isEmpty()) {
            throw new InvalidShapeException("the batch is empty");
        }
        LayerKvView first = Objects.requireNonNull(batch.get(0), "sequence 0");
        int kvHeads = first.kvHeads();
        int headDim = first.headDim();
        if (kvHeads <= 0 || headDim <= 0) {
            throw new InvalidShapeException("sequence 0 of the batch: kvHeads and headDim must be > 0, got " + kvHeads + ", "
                    + headDim);
        }
        if (queryHeads <= 0 || queryHeads % kvHeads != 0) {
            throw new InvalidShapeException("queryHeads " + queryHeads + " is not a positive multiple of kvHeads "
                    + kvHeads);
        }
        for (int b = 0; b < batch.size(); b++) {
            checkView(b, Objects.requireNonNull(batch.get(b), "sequence " + b + " of the batch"), kvHeads, headDim, allowSpans,
                    queryHeads / kvHeads);
        }
        long elements = (long) batch.size() * queryHeads * headDim;
        requireSize("queries", queries, elements * queryType.byteSize());
        requireSize("out", out, elements * Float.BYTES);
        if (out.isReadOnly()) {
            throw new IllegalArgumentException("out is read-only");
        }
        if (elements > Integer.MAX_VALUE - 8) {
            throw new InvalidShapeException("batch of " + elements + " query elements is too large");
        }
        float[] q = new float[(int) elements];
        for (int i = 0; i < q.length; i++) {
            float v = Elements.read(queries, queryType, i);
            if (!Float.isFinite(v)) {
                int d = i % headDim;
                int h = (i / headDim) % queryHeads;
                int b = i / headDim / queryHeads;
                throw new NonFiniteInputException("queries of sequence " + b + " of the batch", h, -1, d, v);
            }
            q[i] = v;
        }
        return new DecodeInputs(batch, queryHeads, kvHeads, headDim, q);
    }

    /** {@code group}: query heads per KV head; the engine keeps {@code group × tokens} scores in one array. */
    private static void checkView(int b, LayerKvView view, int kvHeads, int headDim, boolean allowSpans, int group) {
        String name = "sequence " + b + " of the batch";
        if (view.kvHeads() != kvHeads || view.headDim() != headDim) {
            throw new InvalidShapeException(name + " has " + view.kvHeads() + " KV heads of dim " + view.headDim()
                    + ", sequence 0 has " + kvHeads + " of dim " + headDim);
        }
        DType dtype = Objects.requireNonNull(view.dtype(), name + " dtype");
        int full = view.fullTokens();
        int capacity = view.fullCapacity();
        if (full < 0 || full > capacity) {
            throw new InvalidShapeException(name + ": fullTokens " + full + " outside [0, fullCapacity "
                    + capacity + "]");
        }
        long fullBytes = (long) kvHeads * capacity * headDim * dtype.byteSize();
        requireSize(name + " fullKeys", Objects.requireNonNull(view.fullKeys(), name + " fullKeys"), fullBytes);
        requireSize(name + " fullValues", Objects.requireNonNull(view.fullValues(), name + " fullValues"),
                fullBytes);
        List<QuantizedSpan> spans = Objects.requireNonNull(view.visualSpans(), name + " visualSpans");
        if (!allowSpans && !spans.isEmpty()) {
            throw new InvalidShapeException(name + " has " + spans.size()
                    + " quantized visual spans; this attention reads full-precision caches only");
        }
        long tokens = full;
        for (int i = 0; i < spans.size(); i++) {
            QuantizedSpan span = Objects.requireNonNull(spans.get(i), name + " span " + i);
            checkSpan(name + " span " + i, span, kvHeads, headDim);
            tokens += span.tokens();
        }
        if (tokens == 0) {
            throw new InvalidShapeException(name + " has no tokens to attend to");
        }
        if (tokens > Integer.MAX_VALUE / 16 / group) {
            throw new InvalidShapeException(name + " has too many tokens for one decode step: " + tokens + " (× "
                    + group + " query heads per KV head must stay below " + Integer.MAX_VALUE / 16 + ")");
        }
    }

    private static void checkSpan(String name, QuantizedSpan span, int kvHeads, int headDim) {
        if (span.kvHeads() != kvHeads || span.headDim() != headDim) {
            throw new InvalidShapeException(name + " has " + span.kvHeads() + " KV heads of dim " + span.headDim()
                    + ", the sequence has " + kvHeads + " of dim " + headDim);
        }
        for (int bits : new int[] {span.bits(), span.valueBits()}) {
            if (bits != 1 && bits != 2 && bits != 4 && bits != 8) {
                throw new InvalidShapeException(name + ": bits must be 1, 2, 4 or 8, got " + bits);
            }
            if ((headDim * bits) % 8 != 0) {
                throw new InvalidShapeException(name + ": headDim " + headDim + " times " + bits
                        + " bits is not a multiple of 8");
            }
        }
        if (span.tokens() <= 0) {
            throw new InvalidShapeException(name + " has " + span.tokens() + " tokens");
        }
        Granularity kg = Objects.requireNonNull(span.keyGranularity(), name + " keyGranularity");
        Granularity vg = Objects.requireNonNull(span.valueGranularity(), name + " valueGranularity");
        long codeBytes = (long) kvHeads * span.tokens() * span.bytesPerTokenRow();
        long valueCodeBytes = (long) kvHeads * span.tokens() * span.valueBytesPerTokenRow();
        requireSize(name + " keyCodes", Objects.requireNonNull(span.keyCodes(), name + " keyCodes"), codeBytes);
        requireSize(name + " valueCodes", Objects.requireNonNull(span.valueCodes(), name + " valueCodes"),
                valueCodeBytes);
        DType paramType = Objects.requireNonNull(span.paramType(), name + " paramType");
        if (paramType == DType.BF16) {
            throw new InvalidShapeException(name + ": parameters must be fp32 or fp16, got BF16");
        }
        long keyParams = paramType.byteSize() * ChannelQuantizer.paramCount(kg, kvHeads, span.tokens(), headDim);
        long valueParams = paramType.byteSize() * ChannelQuantizer.paramCount(vg, kvHeads, span.tokens(), headDim);
        if (span.wideKeys() != null) {
            checkWideKeys(name, span, kvHeads, headDim);
        }
        requireSize(name + " keyScale", Objects.requireNonNull(span.keyScale(), name + " keyScale"), keyParams);
        requireSize(name + " keyOffset", Objects.requireNonNull(span.keyOffset(), name + " keyOffset"), keyParams);
        requireSize(name + " valueScale", Objects.requireNonNull(span.valueScale(), name + " valueScale"),
                valueParams);
        requireSize(name + " valueOffset", Objects.requireNonNull(span.valueOffset(), name + " valueOffset"),
                valueParams);
    }

    /** Wide key channels: 1-bit per-channel keys, sizes that match, and a mask marking that many channels per head. */
    private static void checkWideKeys(String name, QuantizedSpan span, int kvHeads, int headDim) {
        QuantizedSpan.WideKeys wide = span.wideKeys();
        int channels = wide.channels();
        if (span.bits() != 1 || span.keyGranularity() != Granularity.PER_CHANNEL) {
            throw new InvalidShapeException(name + ": wide key channels need 1-bit per-channel keys");
        }
        if (channels <= 0 || channels % 8 != 0 || channels > headDim) {
            throw new InvalidShapeException(name + ": " + channels + " wide key channels; a positive multiple of 8 up "
                    + "to headDim " + headDim + " expected");
        }
        requireSize(name + " wide-channel mask", wide.mask(), (long) kvHeads * (headDim / 8));
        requireSize(name + " wide-channel low bits", wide.lowBits(), (long) kvHeads * span.tokens() * (channels / 8));
        for (int h = 0; h < kvHeads; h++) {
            wide.channelsOf(h, headDim); // throws when the mask marks another count
        }
    }

    private static void requireSize(String name, MemorySegment segment, long bytes) {
        if (segment.byteSize() != bytes) {
            throw new InvalidShapeException(name + " holds " + segment.byteSize() + " bytes, its shape needs "
                    + bytes);
        }
    }

    /** Index of query head {@code h}'s first element of sequence {@code b} in {@link #queries} and in results. */
    int rowIndex(int b, int h) {
        return (b * queryHeads + h) * headDim;
    }

    /** Writes {@code result} ({@code [B][queryHeads][headDim]}) to {@code out}, after checking all of it is finite. */
    void writeChecked(float[] result, MemorySegment out) {
        for (int i = 0; i < result.length; i++) {
            if (!Float.isFinite(result[i])) {
                throw new NonFiniteResultException(i / headDim / queryHeads, (i / headDim) % queryHeads,
                        i % headDim, result[i]);
            }
        }
        MemorySegment.copy(result, 0, out, Elements.FLOAT_LE, 0, result.length);
    }
}
