package dev.calibquant.cache;

import dev.calibquant.quant.ChannelQuantizer;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.KvSlice;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SegmentAllocator;
import java.util.List;
import java.util.Objects;

/**
 * One layer's end of prefill as the manager hands it to its {@link KvStorage#storePrefill storage}, after checking
 * the input and allocating every block: the host keys and values {@code [kvHeads][promptTokens][headDim]} of
 * {@code dtype}, the rows outside the visual spans to copy, in order, into the full-precision pair (pitch
 * {@code fullCapacity} rows), and each visual span to quantize with {@code quantConfig} into its own pair, each half
 * laid out {@code [scale][offset][codes]} ({@link #spanPart}).
 *
 * @param gaps the token ranges of the prompt that stay in full precision, in order
 * @param spans each visual span with the pair it is quantized into; empty when the sequence has none
 */
public record LayerPrefill(MemorySegment keys, MemorySegment values, DType dtype, int kvHeads, int promptTokens,
        int headDim, BlockPair full, int fullCapacity, List<TokenSpan> gaps, QuantConfig quantConfig,
        List<SpanTarget> spans) {

    /** A visual span of the prompt and the pair of blocks its key part and value part go into. */
    public record SpanTarget(TokenSpan span, BlockPair blocks) {
        public SpanTarget {
            Objects.requireNonNull(span, "span");
            Objects.requireNonNull(blocks, "blocks");
        }
    }

    public LayerPrefill {
        Objects.requireNonNull(keys, "keys");
        Objects.requireNonNull(values, "values");
        Objects.requireNonNull(dtype, "dtype");
        Objects.requireNonNull(full, "full");
        gaps = List.copyOf(gaps);
        spans = List.copyOf(spans);
        if (!spans.isEmpty()) {
            Objects.requireNonNull(quantConfig, "quantConfig");
        }
    }

    /** Bytes of one source row (one token of one head). */
    public long rowBytes() {
        return (long) headDim * dtype.byteSize();
    }

    /**
     * The byte sizes of the parts of a span's key half or value half: {scale, offset, codes, then, in a key half
     * with wide key channels, the wide-channel mask and low bits}.
     */
    public record SpanPart(long scaleBytes, long codeBytes, long maskBytes, long lowBitBytes) {
        /** Bytes of the whole half. */
        public long bytes() {
            return 2 * scaleBytes + codeBytes + maskBytes + lowBitBytes;
        }
    }

    /**
     * The layout of a span's key half ({@code keys} true) or value half: {@code [scale][offset][codes]}, scale and
     * offset of the config's parameter type per its granularity, codes {@code [kvHeads][tokens][headDim · bits / 8]}
     * (the values' own width for the value half); a key half with wide key channels goes on with
     * {@code [mask][lowBits]} ({@link QuantizedSpan.WideKeys}).
     */
    public static SpanPart spanPart(QuantConfig config, boolean keys, int kvHeads, int tokens, int headDim) {
        long params = ChannelQuantizer.paramCount(keys ? config.keyGranularity() : config.valueGranularity(), kvHeads,
                tokens, headDim);
        long codes = (long) kvHeads * tokens * headDim * (keys ? config.bits() : config.valueBits()) / 8;
        long mask = keys ? ChannelQuantizer.wideMaskBytes(config, kvHeads, headDim) : 0;
        long low = keys ? ChannelQuantizer.wideLowBitBytes(config, kvHeads, tokens) : 0;
        return new SpanPart(config.paramType().byteSize() * params, codes, mask, low);
    }

    /** The span stored in a key half and a value half laid out by {@link #spanPart}: views of the two segments. */
    public static QuantizedSpan spanOf(QuantConfig config, int kvHeads, int tokens, int headDim, MemorySegment k,
            MemorySegment v) {
        SpanPart kp = spanPart(config, true, kvHeads, tokens, headDim);
        SpanPart vp = spanPart(config, false, kvHeads, tokens, headDim);
        long ks = kp.scaleBytes();
        long vs = vp.scaleBytes();
        QuantizedSpan.WideKeys wide = null;
        if (kp.maskBytes() > 0) {
            long at = 2 * ks + kp.codeBytes();
            wide = new QuantizedSpan.WideKeys(config.wideKeyChannels(), k.asSlice(at, kp.maskBytes()),
                    k.asSlice(at + kp.maskBytes(), kp.lowBitBytes()));
        }
        return new QuantizedSpan(tokens, kvHeads, headDim, config.bits(), config.keyGranularity(),
                config.valueGranularity(), k.asSlice(2 * ks, kp.codeBytes()), v.asSlice(2 * vs, vp.codeBytes()),
                k.asSlice(0, ks), k.asSlice(ks, ks), v.asSlice(0, vs), v.asSlice(vs, vs), config.valueBits(),
                config.paramType(), wide);
    }

    /**
     * The row copies of the full-precision tokens, for {@link KvStorage#write}: per gap, one row per KV head (source
     * pitch {@code promptTokens} rows, target pitch {@code fullCapacity} rows).
     */
    public List<RowCopy> gapCopies() {
        long rowBytes = rowBytes();
        List<RowCopy> copies = new java.util.ArrayList<>(gaps.size());
        int target = 0;
        for (TokenSpan gap : gaps) {
            copies.add(new RowCopy(gap.start() * rowBytes, promptTokens * rowBytes, target * rowBytes,
                    fullCapacity * rowBytes, gap.length() * rowBytes, kvHeads));
            target += gap.length();
        }
        return copies;
    }

    /**
     * Stores the prefill through {@code storage}'s {@link KvStorage#write}, quantizing on the CPU
     * ({@link ChannelQuantizer}): what {@link KvStorage#storePrefill} does unless a storage does better.
     */
    public void storeWithCpuQuantizer(KvStorage storage) {
        for (RowCopy rows : gapCopies()) {
            storage.write(keys, full.keys(), rows);
            storage.write(values, full.values(), rows);
        }
        for (SpanTarget target : spans) {
            TokenSpan span = target.span();
            long bytes = ChannelQuantizer.bytesFor(quantConfig, kvHeads, span.length(), headDim);
            try (Arena staging = Arena.ofConfined()) {
                MemorySegment stage = staging.allocate(bytes, HostStorage.ALIGNMENT);
                QuantizedSpan q = ChannelQuantizer.quantize(quantConfig,
                        KvSlice.ofTokens(keys, dtype, kvHeads, promptTokens, headDim, span.start(), span.end()),
                        KvSlice.ofTokens(values, dtype, kvHeads, promptTokens, headDim, span.start(), span.end()),
                        SegmentAllocator.slicingAllocator(stage));
                MemorySegment keyPart = q.wideKeys() == null ? concat(staging, q.keyScale(), q.keyOffset(), q.keyCodes())
                        : concat(staging, q.keyScale(), q.keyOffset(), q.keyCodes(), q.wideKeys().mask(),
                                q.wideKeys().lowBits());
                MemorySegment valuePart = concat(staging, q.valueScale(), q.valueOffset(), q.valueCodes());
                storage.write(keyPart, target.blocks().keys(), RowCopy.contiguous(0, 0, keyPart.byteSize()));
                storage.write(valuePart, target.blocks().values(), RowCopy.contiguous(0, 0, valuePart.byteSize()));
            }
        }
    }

    /** The parts one after the other, in a new segment of {@code arena}. */
    private static MemorySegment concat(Arena arena, MemorySegment... parts) {
        long bytes = 0;
        for (MemorySegment p : parts) {
            bytes += p.byteSize();
        }
        MemorySegment out = arena.allocate(bytes, HostStorage.ALIGNMENT);
        long at = 0;
        for (MemorySegment p : parts) {
            MemorySegment.copy(p, 0, out, at, p.byteSize());
            at += p.byteSize();
        }
        return out;
    }
}
