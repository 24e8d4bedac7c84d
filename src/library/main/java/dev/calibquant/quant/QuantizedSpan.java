package dev.calibquant.quant;

import java.lang.foreign.MemorySegment;

/**
 * One visual span of one sequence and one layer, quantized: packed codes plus scales, for every KV head.
 *
 * <p>The contract shared by the CPU reference, the cache manager and the GPU kernels (spec §3):
 * <ul>
 *   <li>{@code keyCodes}, {@code valueCodes}: bytes {@code [kvHeads][tokens][headDim * bits / 8]} ({@code bits} for
 *       the keys, {@code valueBits} for the values); codes packed {@code 8 / bits} per byte along the head dimension,
 *       most significant bits first (1 bit: byte {@code j} holds channels {@code 8j..8j+7}, channel {@code 8j} in
 *       bit 7).</li>
 *   <li>{@code keyScale}/{@code keyOffset} (σ, α) and {@code valueScale}/{@code valueOffset}: fp32, shaped per
 *       {@link Granularity} ({@code [kvHeads][headDim]} or {@code [kvHeads][tokens]}), of {@code paramType} (fp32 or
 *       fp16). An element is rebuilt as {@code offset + scale * code}; a degenerate channel has scale 0.</li>
 *   <li>{@code wideKeys}, or null: key channels coded on 2 bits inside 1-bit keys. Such a channel's 2-bit code
 *       {@code c} is split: its high bit is the channel's code in {@code keyCodes}, its low bit sits in
 *       {@link WideKeys#lowBits}, and its stored scale is the weight of the high bit, so the key is rebuilt as
 *       {@code offset + scale * high + (scale / 2) * low}. The other channels are plain 1-bit channels.</li>
 * </ul>
 * The segments are owned by whoever made the span (an arena, or the cache manager); this record is a view.
 */
public record QuantizedSpan(
        int tokens,
        int kvHeads,
        int headDim,
        int bits,
        Granularity keyGranularity,
        Granularity valueGranularity,
        MemorySegment keyCodes,
        MemorySegment valueCodes,
        MemorySegment keyScale,
        MemorySegment keyOffset,
        MemorySegment valueScale,
        MemorySegment valueOffset,
        int valueBits,
        DType paramType,
        WideKeys wideKeys) {

    /**
     * The key channels coded on 2 bits ({@link QuantConfig#wideKeyChannels}).
     *
     * @param channels per KV head, how many channels are wide
     * @param mask     {@code [kvHeads][headDim / 8]} bytes: bit {@code 7 − d % 8} of byte {@code d / 8} is set when
     *                 channel {@code d} is wide (as 1-bit codes are packed)
     * @param lowBits  {@code [kvHeads][tokens][channels / 8]} bytes: the low bits of the wide channels, in channel
     *                 order, packed as 1-bit codes
     */
    public record WideKeys(int channels, MemorySegment mask, MemorySegment lowBits) {
        public WideKeys {
            java.util.Objects.requireNonNull(mask, "mask");
            java.util.Objects.requireNonNull(lowBits, "lowBits");
        }

        /** The wide channels of {@code head}, ascending. */
        public int[] channelsOf(int head, int headDim) {
            int[] out = new int[channels];
            int n = 0;
            for (int d = 0; d < headDim; d++) {
                if (isWide(head, headDim, d)) {
                    if (n < channels) {
                        out[n] = d;
                    }
                    n++;
                }
            }
            if (n != channels) {
                throw new InvalidShapeException("the wide-channel mask of head " + head + " marks " + n
                        + " channels, not " + channels);
            }
            return out;
        }

        boolean isWide(int head, int headDim, int d) {
            int b = mask.get(java.lang.foreign.ValueLayout.JAVA_BYTE, (long) head * (headDim / 8) + d / 8) & 0xFF;
            return ((b >>> (7 - d % 8)) & 1) != 0;
        }
    }

    public QuantizedSpan {
        java.util.Objects.requireNonNull(paramType, "paramType");
    }

    /** fp32 parameters and no wide key channels. */
    public QuantizedSpan(int tokens, int kvHeads, int headDim, int bits, Granularity keyGranularity,
            Granularity valueGranularity, MemorySegment keyCodes, MemorySegment valueCodes, MemorySegment keyScale,
            MemorySegment keyOffset, MemorySegment valueScale, MemorySegment valueOffset, int valueBits) {
        this(tokens, kvHeads, headDim, bits, keyGranularity, valueGranularity, keyCodes, valueCodes, keyScale,
                keyOffset, valueScale, valueOffset, valueBits, DType.FP32, null);
    }

    /** A span whose keys and values have one code width, {@code bits}. */
    public QuantizedSpan(int tokens, int kvHeads, int headDim, int bits, Granularity keyGranularity,
            Granularity valueGranularity, MemorySegment keyCodes, MemorySegment valueCodes, MemorySegment keyScale,
            MemorySegment keyOffset, MemorySegment valueScale, MemorySegment valueOffset) {
        this(tokens, kvHeads, headDim, bits, keyGranularity, valueGranularity, keyCodes, valueCodes, keyScale,
                keyOffset, valueScale, valueOffset, bits);
    }

    /**
     * Every segment of the span, in one fixed order: key codes, value codes, key scale, key offset, value scale, value
     * offset, then the wide-key mask and low bits when there are wide key channels. Each is laid out
     * {@code [kvHeads][...]}; {@link #withSegments} takes them back in this order.
     */
    public java.util.List<MemorySegment> segments() {
        return wideKeys == null ? java.util.List.of(keyCodes, valueCodes, keyScale, keyOffset, valueScale, valueOffset)
                : java.util.List.of(keyCodes, valueCodes, keyScale, keyOffset, valueScale, valueOffset,
                        wideKeys.mask(), wideKeys.lowBits());
    }

    /**
     * The same span over {@code kvHeads} heads held in {@code segments} (the order of {@link #segments}): a slice of
     * its heads, a copy elsewhere, several spans' heads side by side.
     */
    public QuantizedSpan withSegments(int kvHeads, java.util.List<MemorySegment> segments) {
        if (segments.size() != segments().size()) {
            throw new IllegalArgumentException(segments.size() + " segments for a span of " + segments().size());
        }
        WideKeys wide = wideKeys == null ? null : new WideKeys(wideKeys.channels(), segments.get(6), segments.get(7));
        return new QuantizedSpan(tokens, kvHeads, headDim, bits, keyGranularity, valueGranularity, segments.get(0),
                segments.get(1), segments.get(2), segments.get(3), segments.get(4), segments.get(5), valueBits,
                paramType, wide);
    }

    /** Scale or offset {@code index} of one of this span's parameter segments, as fp32. */
    public float param(MemorySegment params, long index) {
        return Elements.read(params, paramType, index);
    }

    /** Bytes of one token's key codes for one head. */
    public int bytesPerTokenRow() {
        return headDim * bits / 8;
    }

    /** Bytes of one token's value codes for one head. */
    public int valueBytesPerTokenRow() {
        return headDim * valueBits / 8;
    }
}
