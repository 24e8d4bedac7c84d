package dev.calibquant.cache;

/**
 * Bytes a cache (or one sequence of it) holds, by kind, next to what fp16 would take for the same tokens.
 *
 * @param fullPrecisionBytes allocated full-precision K/V blocks (prefix, text, generated tokens), including the
 *     capacity reserved for tokens not yet appended
 * @param visualCodeBytes packed codes of quantized visual keys and values
 * @param visualScaleBytes per-channel (or per-token) scales and offsets of quantized visual spans
 * @param fp16Bytes what the tokens held would take as fp16 keys and values: {@code 2 · kvHeads · tokens · headDim · 2}
 *     summed over filled layers; not memory, a yardstick
 */
public record MemoryUsage(long fullPrecisionBytes, long visualCodeBytes, long visualScaleBytes, long fp16Bytes) {

    public static final MemoryUsage ZERO = new MemoryUsage(0, 0, 0, 0);

    /** Bytes allocated: what the byte limit counts. */
    public long totalBytes() {
        return fullPrecisionBytes + visualCodeBytes + visualScaleBytes;
    }

    public MemoryUsage plus(MemoryUsage other) {
        return new MemoryUsage(fullPrecisionBytes + other.fullPrecisionBytes, visualCodeBytes + other.visualCodeBytes,
                visualScaleBytes + other.visualScaleBytes, fp16Bytes + other.fp16Bytes);
    }

    public MemoryUsage minus(MemoryUsage other) {
        return new MemoryUsage(fullPrecisionBytes - other.fullPrecisionBytes, visualCodeBytes - other.visualCodeBytes,
                visualScaleBytes - other.visualScaleBytes, fp16Bytes - other.fp16Bytes);
    }

    @Override
    public String toString() {
        return totalBytes() + " bytes (full precision " + fullPrecisionBytes + ", visual codes " + visualCodeBytes
                + ", visual scales " + visualScaleBytes + "; fp16 would take " + fp16Bytes + ")";
    }
}
