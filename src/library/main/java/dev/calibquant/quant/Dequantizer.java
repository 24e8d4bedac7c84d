package dev.calibquant.quant;

import java.util.Objects;

/**
 * Rebuilds a span's keys or values, {@code X̂ = α + σ·code}, as plain arrays. Deliberately simple: for tests and the
 * reference attention, never for the decode path. Each element is formed in double, where {@code α + σ·code} of an
 * fp32 α, an fp32 σ and a code below 256 is exact up to one rounding at 2^−53.
 */
public final class Dequantizer {
    private Dequantizer() {
    }

    /** Keys of one KV head, {@code [tokens][headDim]} row-major. */
    public static double[] keys(QuantizedSpan span, int head) {
        return rebuild(span, head, true);
    }

    /** Values of one KV head, {@code [tokens][headDim]} row-major. */
    public static double[] values(QuantizedSpan span, int head) {
        return rebuild(span, head, false);
    }

    /** The unpacked codes of one KV head, {@code [tokens][headDim]} row-major. */
    public static int[] codes(QuantizedSpan span, int head, boolean keys) {
        Objects.requireNonNull(span, "span");
        if (head < 0 || head >= span.kvHeads()) {
            throw new InvalidShapeException("head " + head + " outside [0, " + span.kvHeads() + ")");
        }
        int headDim = span.headDim();
        int rowBytes = keys ? span.bytesPerTokenRow() : span.valueBytesPerTokenRow();
        int bits = keys ? span.bits() : span.valueBits();
        int[] codes = new int[span.tokens() * headDim];
        int[] row = new int[headDim];
        for (int n = 0; n < span.tokens(); n++) {
            long at = ((long) head * span.tokens() + n) * rowBytes;
            BitPacking.unpackRow(keys ? span.keyCodes() : span.valueCodes(), at, headDim, bits, row);
            System.arraycopy(row, 0, codes, n * headDim, headDim);
        }
        return codes;
    }

    private static double[] rebuild(QuantizedSpan span, int head, boolean keys) {
        int[] codes = codes(span, head, keys);
        Granularity granularity = keys ? span.keyGranularity() : span.valueGranularity();
        var scale = keys ? span.keyScale() : span.valueScale();
        var offset = keys ? span.keyOffset() : span.valueOffset();
        int headDim = span.headDim();
        int tokens = span.tokens();
        int perHead = granularity == Granularity.PER_TOKEN ? tokens : headDim;
        double[] out = new double[codes.length];
        for (int n = 0; n < tokens; n++) {
            for (int d = 0; d < headDim; d++) {
                long p = (long) head * perHead + (granularity == Granularity.PER_TOKEN ? n : d);
                double sigma = scale.getAtIndex(Elements.FLOAT_LE, p);
                double alpha = offset.getAtIndex(Elements.FLOAT_LE, p);
                out[n * headDim + d] = alpha + sigma * codes[n * headDim + d];
            }
        }
        return out;
    }
}
