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
 *       {@link Granularity} ({@code [kvHeads][headDim]} or {@code [kvHeads][tokens]}). An element is rebuilt as
 *       {@code offset + scale * code}; a degenerate channel has scale 0.</li>
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
        int valueBits) {

    /** A span whose keys and values have one code width, {@code bits}. */
    public QuantizedSpan(int tokens, int kvHeads, int headDim, int bits, Granularity keyGranularity,
            Granularity valueGranularity, MemorySegment keyCodes, MemorySegment valueCodes, MemorySegment keyScale,
            MemorySegment keyOffset, MemorySegment valueScale, MemorySegment valueOffset) {
        this(tokens, kvHeads, headDim, bits, keyGranularity, valueGranularity, keyCodes, valueCodes, keyScale,
                keyOffset, valueScale, valueOffset, bits);
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
