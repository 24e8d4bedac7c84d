package dev.calibquant.cache;

import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.NonFiniteInputException;
import java.lang.foreign.MemorySegment;

/** Rejects a NaN or an infinity in caller data before the cache stores any of it. */
final class FiniteCheck {

    private FiniteCheck() {
    }

    /**
     * Checks {@code data} laid out {@code [kvHeads][tokens][headDim]}; the exception names the first bad element, its
     * token counted from {@code firstPosition} (the sequence position of the data's first token).
     */
    static void requireFinite(String tensor, MemorySegment data, DType dtype, int kvHeads, int tokens, int headDim,
            int firstPosition) {
        requireFinite(tensor, data, dtype, kvHeads, tokens, tokens, headDim, firstPosition);
    }

    /** The first {@code tokens} rows of each head of {@code data} laid out {@code [kvHeads][pitchTokens][headDim]}. */
    static void requireFinite(String tensor, MemorySegment data, DType dtype, int kvHeads, int tokens, int pitchTokens,
            int headDim, int firstPosition) {
        float[] row = new float[headDim];
        short[] scratch = new short[headDim];
        for (int h = 0; h < kvHeads; h++) {
            for (int n = 0; n < tokens; n++) {
                Elements.readRow(data, dtype, ((long) h * pitchTokens + n) * headDim, row, 0, headDim, scratch);
                for (int d = 0; d < headDim; d++) {
                    if (!Float.isFinite(row[d])) {
                        throw new NonFiniteInputException(tensor, h, firstPosition + n, d, row[d]);
                    }
                }
            }
        }
    }
}
