package dev.calibquant.attention;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.RecursiveAction;

/**
 * The CPU decode step shared by the fast attention classes: one task per (sequence, KV head), spread over a
 * {@link ForkJoinPool}; the task serves all {@code G} query heads of its KV head, so each key and value row (and
 * each packed code row) is read once for all of them. Everything accumulates in fp32. Results go to a heap array
 * that is checked and copied to {@code out} only when every task has finished. A cache with segments confined to the
 * calling thread is processed on that thread alone.
 */
final class CpuDecodeEngine {
    /**
     * The pool the attention classes use unless given one: one worker per core, daemon threads, created on first use
     * and kept for the life of the process (like the common pool, which has one worker fewer than the cores and, in
     * our measurements, does not let the calling thread share the work).
     */
    static ForkJoinPool defaultPool() {
        return DefaultPool.POOL;
    }

    private static final class DefaultPool {
        static final ForkJoinPool POOL = new ForkJoinPool(Runtime.getRuntime().availableProcessors());
    }

    /** Full-precision rows widened per chunk, so the fp32 copy stays in the core's cache. */
    private static final int CHUNK_TOKENS = 128;

    private final Calibration calibration;
    private final ForkJoinPool pool;
    private final boolean allowSpans;
    private final ThreadLocal<Scratch> scratch = ThreadLocal.withInitial(Scratch::new);

    CpuDecodeEngine(Calibration calibration, ForkJoinPool pool, boolean allowSpans) {
        this.calibration = Objects.requireNonNull(calibration, "calibration");
        this.pool = Objects.requireNonNull(pool, "pool");
        this.allowSpans = allowSpans;
    }

    void decode(List<? extends LayerKvView> batch, MemorySegment queries, DType queryType, int queryHeads,
            MemorySegment out) {
        DecodeInputs in = DecodeInputs.check(batch, queries, queryType, queryHeads, out, allowSpans);
        float[] result = new float[in.queries.length];
        int tasks = in.sequences * in.kvHeads;
        Range all = new Range(in, result, 0, tasks);
        if (!in.cacheShared) {
            // segments of a confined arena can be read by the calling thread only
            for (int t = 0; t < tasks; t++) {
                headGroup(in, t, result);
            }
        } else {
            pool.invoke(all);
        }
        in.writeChecked(result, out);
    }

    /** Splits task indices in halves down to single tasks, so idle workers can steal the other half. */
    private final class Range extends RecursiveAction {
        private final DecodeInputs in;
        private final float[] result;
        private final int from;
        private final int to;

        Range(DecodeInputs in, float[] result, int from, int to) {
            this.in = in;
            this.result = result;
            this.from = from;
            this.to = to;
        }

        @Override
        protected void compute() {
            if (to - from == 1) {
                headGroup(in, from, result);
                return;
            }
            int mid = (from + to) >>> 1;
            invokeAll(new Range(in, result, from, mid), new Range(in, result, mid, to));
        }
    }

    /** All query heads of one KV head of one sequence: scores, calibration, softmax, weighted sum. */
    private void headGroup(DecodeInputs in, int task, float[] result) {
        int b = task / in.kvHeads;
        int kvh = task % in.kvHeads;
        LayerKvView view = in.batch.get(b);
        int groups = in.groupSize;
        int headDim = in.headDim;
        int qOff = in.rowIndex(b, kvh * groups);
        float scale = (float) (1 / Math.sqrt(headDim));
        List<QuantizedSpan> spans = view.visualSpans();
        int full = view.fullTokens();
        int total = full;
        for (QuantizedSpan s : spans) {
            total += s.tokens();
        }

        Scratch sc = scratch.get();
        sc.scores = Scratch.grow(sc.scores, groups * total);
        sc.sums = Scratch.grow(sc.sums, groups);
        sc.acc = Scratch.grow(sc.acc, groups * headDim);
        float[] scores = sc.scores;

        fullScores(view, kvh, in.queries, qOff, groups, scores, total, scale, sc);
        int at = full;
        for (QuantizedSpan span : spans) {
            PackedSpanKernel.scores(span, kvh, in.queries, qOff, groups, scores, total, at, scale, sc);
            for (int g = 0; g < groups; g++) {
                calibration.applyInPlace(scores, g * total + at, g * total + at + span.tokens());
            }
            at += span.tokens();
        }

        float[] sums = sc.sums;
        for (int g = 0; g < groups; g++) {
            sums[g] = Softmax.expInPlace(scores, g * total, total);
        }

        float[] acc = sc.acc;
        java.util.Arrays.fill(acc, 0, groups * headDim, 0f);
        fullValues(view, kvh, groups, scores, total, acc, sc);
        at = full;
        for (QuantizedSpan span : spans) {
            PackedSpanKernel.values(span, kvh, groups, scores, total, at, acc, sc);
            at += span.tokens();
        }
        for (int g = 0; g < groups; g++) {
            float sum = sums[g];
            for (int d = 0; d < headDim; d++) {
                result[qOff + g * headDim + d] = acc[g * headDim + d] / sum;
            }
        }
    }

    private static void fullScores(LayerKvView view, int kvh, float[] q, int qOff, int groups, float[] scores,
            int total, float scale, Scratch sc) {
        int headDim = view.headDim();
        long base = (long) kvh * view.fullCapacity() * headDim;
        for (int start = 0; start < view.fullTokens(); start += CHUNK_TOKENS) {
            int count = Math.min(CHUNK_TOKENS, view.fullTokens() - start);
            float[] rows = readRows(view.fullKeys(), view.dtype(), base + (long) start * headDim, count * headDim,
                    sc);
            for (int n = 0; n < count; n++) {
                for (int g = 0; g < groups; g++) {
                    scores[g * total + start + n] = Dot.dot(q, qOff + g * headDim, rows, n * headDim, headDim) * scale;
                }
            }
        }
    }

    private static void fullValues(LayerKvView view, int kvh, int groups, float[] weights, int total, float[] acc,
            Scratch sc) {
        int headDim = view.headDim();
        long base = (long) kvh * view.fullCapacity() * headDim;
        sc.headAcc = Scratch.zeroed(sc.headAcc, groups, headDim);
        sc.row = Scratch.grow(sc.row, headDim);
        float[][] heads = sc.headAcc;
        float[] row = sc.row;
        for (int start = 0; start < view.fullTokens(); start += CHUNK_TOKENS) {
            int count = Math.min(CHUNK_TOKENS, view.fullTokens() - start);
            float[] rows = readRows(view.fullValues(), view.dtype(), base + (long) start * headDim,
                    count * headDim, sc);
            for (int n = 0; n < count; n++) {
                System.arraycopy(rows, n * headDim, row, 0, headDim);
                for (int g = 0; g < groups; g++) {
                    Dot.axpy(weights[g * total + start + n], row, heads[g], headDim);
                }
            }
        }
        for (int g = 0; g < groups; g++) {
            for (int d = 0; d < headDim; d++) {
                acc[g * headDim + d] += heads[g][d];
            }
        }
    }

    private static float[] readRows(MemorySegment segment, DType dtype, long index, int count, Scratch sc) {
        sc.rows = Scratch.grow(sc.rows, count);
        sc.shorts = Scratch.grow(sc.shorts, count);
        Elements.readRow(segment, dtype, index, sc.rows, 0, count, sc.shorts);
        return sc.rows;
    }
}
