package dev.calibquant.gpu;

import dev.calibquant.cache.MemoryUsage;

/**
 * The hand formula for what one sequence of the BENCHMARKS.md workload (8 KV heads, D = 128; 41 prefix + 3328
 * visual + 64 text tokens) plus {@code generated} reserved tokens takes in the GPU cache, written from the layout
 * (ARCHITECTURE.md, GpuKvCache's class comment), not from its code. Per layer:
 * <ul>
 *   <li>full precision: K and V, fp16, {@code 8 · rows · 128} elements each, where rows = every token plus the
 *       generated ones in the fp16 cache, and only prefix + text + generated ({@code 105 + G}) in the 1-bit cache;
 *   <li>1-bit visual codes: K and V, {@code 8 · 3328} rows of {@code 128 / 8 = 16} bytes each;
 *   <li>visual scales: σK, αK, σV, αV, fp32, {@code 8 · 128} each;
 * </ul>
 * each region rounded up to the device pools' 64-element alignment. The yardstick {@code fp16Bytes} is K and V in
 * fp16 for all {@code 3433 + G} tokens.
 */
final class BudgetFormula {
    static final int KV_HEADS = 8;
    static final int HEAD_DIM = 128;
    static final int PROMPT = 41 + 3328 + 64;
    static final int VISUAL = 3328;

    private BudgetFormula() {}

    static MemoryUsage sequence(boolean oneBit, int layers, int generated) {
        int rows = (oneBit ? PROMPT - VISUAL : PROMPT) + generated;
        long codes = oneBit ? layers * 2L * align64((long) KV_HEADS * VISUAL * HEAD_DIM / 8) : 0;
        long scales = oneBit ? layers * 4L * 4 * align64((long) KV_HEADS * HEAD_DIM) : 0;
        return new MemoryUsage(fullPrecisionBytes(layers, rows), codes, scales,
                layers * 2L * KV_HEADS * (PROMPT + generated) * HEAD_DIM * 2);
    }

    /** K and V in fp16 for {@code rows} rows per KV head, every layer. */
    static long fullPrecisionBytes(int layers, int rows) {
        return layers * 2L * 2 * align64((long) KV_HEADS * rows * HEAD_DIM);
    }

    private static long align64(long elements) {
        return (elements + 63) / 64 * 64;
    }
}
