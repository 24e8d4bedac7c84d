package dev.calibquant.attention;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.quant.DType;
import java.lang.foreign.MemorySegment;
import java.util.List;

/**
 * One decode step of attention for one layer over a batch of sequences (spec §4).
 *
 * <p>{@code queries} is {@code [B][queryHeads][headDim]} elements of {@code queryType} (post-RoPE), {@code out} is
 * {@code [B][queryHeads][headDim]} fp32, both little-endian, {@code B = batch.size()}. Query head {@code h} attends
 * to KV head {@code h / (queryHeads / kvHeads)} of its sequence; the scores are scaled by {@code 1/√headDim} and one
 * softmax runs over all of the sequence's tokens (full-precision and every quantized visual span).
 *
 * <p>Implementations check every shape and size, and that the queries are finite, before writing anything; bad input
 * throws ({@link dev.calibquant.quant.InvalidShapeException}, {@link dev.calibquant.quant.NonFiniteInputException})
 * and leaves {@code out} untouched. A non-finite result (a cache holding a NaN or an infinity) throws
 * {@link NonFiniteResultException}, also with {@code out} untouched.
 *
 * <p>The CPU implementations read the cache from worker threads; a cache whose segments are confined to the calling
 * thread (a confined arena) is processed on the calling thread alone.
 */
public interface DecodeAttention {

    void decode(List<? extends LayerKvView> batch, MemorySegment queries, DType queryType, int queryHeads,
            MemorySegment out);
}
