package dev.calibquant.bench;

import dev.calibquant.cache.MemoryUsage;

/**
 * The hand formula for what one sequence of the BENCHMARKS.md workload (8 KV heads, D = 128; 41 prefix + 3328
 * visual + 64 text tokens) plus {@code generated} reserved tokens takes in the cache manager's accounting (host or
 * device storage alike), written from the layout ({@code LayerPrefill}, {@code KvCacheManager#createSequence} with a
 * reservation), not from its code. Per layer:
 * <ul>
 *   <li>full precision: K and V, fp16, {@code 8 · rows · 128} elements each, where rows = every token plus the
 *       generated ones in the fp16 cache, and only prefix + text + generated ({@code 105 + G}) in the 1-bit cache;
 *   <li>1-bit visual codes: K and V, {@code 8 · 3328} rows of {@code 128 / 8 = 16} bytes each;
 *   <li>visual scales: σK, αK, σV, αV, fp32, {@code 8 · 128} each;
 * </ul>
 * where a reservation of G &gt; 0 tokens is exact and none (G = 0) gives room for one step, rounded up to 64 tokens.
 * The yardstick {@code fp16Bytes} is K and V in fp16 for the 3433 prompt tokens (what the cache holds at the end of
 * prefill).
 */
final class BudgetFormula {
    static final int KV_HEADS = 8;
    static final int HEAD_DIM = 128;
    static final int PROMPT = 41 + 3328 + 64;
    static final int VISUAL = 3328;

    private BudgetFormula() {}

    static MemoryUsage sequence(boolean oneBit, int layers, int generated) {
        int full = oneBit ? PROMPT - VISUAL : PROMPT;
        int rows = generated > 0 ? full + generated : (full + 1 + 63) / 64 * 64;
        long codes = oneBit ? layers * 2L * KV_HEADS * VISUAL * HEAD_DIM / 8 : 0;
        long scales = oneBit ? layers * 4L * 4 * KV_HEADS * HEAD_DIM : 0;
        return new MemoryUsage(fullPrecisionBytes(layers, rows), codes, scales,
                layers * 2L * KV_HEADS * PROMPT * HEAD_DIM * 2);
    }

    /** K and V in fp16 for {@code rows} rows per KV head, every layer. */
    static long fullPrecisionBytes(int layers, int rows) {
        return layers * 2L * 2 * KV_HEADS * rows * HEAD_DIM;
    }
}
