package dev.calibquant.quant;

import java.util.Objects;

/**
 * A strided, read-only view of keys or values {@code [kvHeads][tokens][headDim]} inside a larger segment, so a span
 * can be quantized where it lies (e.g. tokens {@code [start, end)} of a cache block {@code [kvHeads][capacity][headDim]})
 * without a copy. Element {@code (h, n, d)} is at element index {@code offset + h·headStride + n·tokenStride + d}.
 * Channels are contiguous; strides and offset count elements of {@code dtype}, not bytes.
 *
 * <p>The constructor checks that rows do not overlap and that every element lies inside {@code data}.
 */
public record KvSlice(
        java.lang.foreign.MemorySegment data,
        DType dtype,
        int kvHeads,
        int tokens,
        int headDim,
        long headStride,
        long tokenStride,
        long offset) {

    public KvSlice {
        Objects.requireNonNull(data, "data");
        Objects.requireNonNull(dtype, "dtype");
        if (kvHeads <= 0 || tokens <= 0 || headDim <= 0) {
            throw new InvalidShapeException("kvHeads, tokens and headDim must be > 0, got " + kvHeads + ", "
                    + tokens + ", " + headDim);
        }
        if (offset < 0 || tokenStride < headDim) {
            throw new InvalidShapeException("offset must be >= 0 and tokenStride >= headDim, got offset " + offset
                    + ", tokenStride " + tokenStride + ", headDim " + headDim);
        }
        long headExtent = Math.addExact(Math.multiplyExact(tokens - 1L, tokenStride), headDim);
        if (kvHeads > 1 && headStride < headExtent) {
            throw new InvalidShapeException("headStride " + headStride + " overlaps the previous head, which spans "
                    + headExtent + " elements");
        }
        long end = Math.addExact(Math.addExact(offset, Math.multiplyExact(kvHeads - 1L, Math.max(headStride, 0))),
                headExtent);
        long available = data.byteSize() / dtype.byteSize();
        if (end > available) {
            throw new InvalidShapeException("slice needs elements [" + offset + ", " + end + ") but the segment holds "
                    + available + " elements of " + dtype);
        }
    }

    /** Tokens {@code [start, end)} of a block laid out {@code [kvHeads][capacity][headDim]}. */
    public static KvSlice ofTokens(java.lang.foreign.MemorySegment block, DType dtype, int kvHeads, int capacity,
            int headDim, int start, int end) {
        if (start < 0 || end > capacity || start >= end) {
            throw new InvalidShapeException("token range [" + start + ", " + end + ") is empty or outside capacity "
                    + capacity);
        }
        long headStride = Math.multiplyExact((long) capacity, headDim);
        return new KvSlice(block, dtype, kvHeads, end - start, headDim, headStride, headDim,
                Math.multiplyExact((long) start, headDim));
    }

    /** A dense {@code [kvHeads][tokens][headDim]} tensor starting at element 0. */
    public static KvSlice dense(java.lang.foreign.MemorySegment data, DType dtype, int kvHeads, int tokens,
            int headDim) {
        return ofTokens(data, dtype, kvHeads, tokens, headDim, 0, tokens);
    }

    /** Element index of {@code (head, token, 0)}. */
    public long rowIndex(int head, int token) {
        return offset + head * headStride + token * tokenStride;
    }
}
