package dev.calibquant.cache;

import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.MemorySegment;
import java.util.List;

/**
 * Read-only view of one sequence's cache for one layer: what decode attention consumes.
 *
 * <p>Attention is a softmax over a set of keys (RoPE is already applied to cached keys), so the order of tokens
 * does not change the result: every full-precision token (prefix, text, generated) lives in one growing block, and
 * each visual span is kept quantized on its own, with its own statistics and its own calibration.
 *
 * <p>Full-precision layout: {@code fullKeys()} and {@code fullValues()} are {@code [kvHeads][fullCapacity][headDim]}
 * elements of {@link #dtype()}; only the first {@link #fullTokens()} rows of each head are valid.
 */
public interface LayerKvView {

    int kvHeads();

    int headDim();

    DType dtype();

    int fullTokens();

    int fullCapacity();

    MemorySegment fullKeys();

    MemorySegment fullValues();

    List<QuantizedSpan> visualSpans();
}
