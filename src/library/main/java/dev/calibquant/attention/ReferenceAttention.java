package dev.calibquant.attention;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Dequantizer;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.Objects;

/**
 * Decode attention written the plain way, as the oracle the fast paths are tested against: each visual span is
 * dequantized ({@link Dequantizer}), its scores {@code q·K̂/√D} are calibrated, one softmax runs over
 * {@code [full-precision scores | every span's calibrated scores]} and the output is {@code Σ p·V}.
 *
 * <p>It computes in double throughout (one rounding to fp32 at the end), so that its own error is far below the fp32
 * error of the implementations it checks. With no spans it is exact full-precision attention.
 */
public final class ReferenceAttention implements DecodeAttention {
    private final Calibration calibration;

    public ReferenceAttention(Calibration calibration) {
        this.calibration = Objects.requireNonNull(calibration, "calibration");
    }

    @Override
    public void decode(List<? extends LayerKvView> batch, MemorySegment queries, DType queryType, int queryHeads,
            MemorySegment out) {
        DecodeInputs in = DecodeInputs.check(batch, queries, queryType, queryHeads, out, true);
        float[] result = new float[in.queries.length];
        for (int b = 0; b < in.sequences; b++) {
            LayerKvView view = batch.get(b);
            for (int kvh = 0; kvh < in.kvHeads; kvh++) {
                Tokens tokens = Tokens.of(view, kvh);
                for (int g = 0; g < in.groupSize; g++) {
                    int h = kvh * in.groupSize + g;
                    attend(in.queries, in.rowIndex(b, h), tokens, result);
                }
            }
        }
        in.writeChecked(result, out);
    }

    /** Every key and value one KV head attends to, in double: full-precision rows, then each span's rebuilt rows. */
    private record Tokens(int headDim, int count, double[] keys, double[] values, int[] spanStarts, int[] spanEnds) {
        static Tokens of(LayerKvView view, int kvh) {
            int headDim = view.headDim();
            int full = view.fullTokens();
            List<QuantizedSpan> spans = view.visualSpans();
            int count = full;
            for (QuantizedSpan s : spans) {
                count += s.tokens();
            }
            double[] keys = new double[count * headDim];
            double[] values = new double[count * headDim];
            long base = (long) kvh * view.fullCapacity() * headDim;
            for (int i = 0; i < full * headDim; i++) {
                keys[i] = Elements.read(view.fullKeys(), view.dtype(), base + i);
                values[i] = Elements.read(view.fullValues(), view.dtype(), base + i);
            }
            int[] starts = new int[spans.size()];
            int[] ends = new int[spans.size()];
            int at = full;
            for (int i = 0; i < spans.size(); i++) {
                QuantizedSpan s = spans.get(i);
                System.arraycopy(Dequantizer.keys(s, kvh), 0, keys, at * headDim, s.tokens() * headDim);
                System.arraycopy(Dequantizer.values(s, kvh), 0, values, at * headDim, s.tokens() * headDim);
                starts[i] = at;
                at += s.tokens();
                ends[i] = at;
            }
            return new Tokens(headDim, count, keys, values, starts, ends);
        }
    }

    private void attend(float[] queries, int q, Tokens t, float[] result) {
        int d = t.headDim;
        double scale = 1 / Math.sqrt(d);
        double[] scores = new double[t.count];
        for (int n = 0; n < t.count; n++) {
            double dot = 0;
            for (int i = 0; i < d; i++) {
                dot += queries[q + i] * t.keys[n * d + i];
            }
            scores[n] = dot * scale;
        }
        for (int i = 0; i < t.spanStarts.length; i++) {
            calibration.applyInPlace(scores, t.spanStarts[i], t.spanEnds[i]);
        }
        double max = Double.NEGATIVE_INFINITY;
        for (double s : scores) {
            max = Math.max(max, s);
        }
        double sum = 0;
        for (int n = 0; n < t.count; n++) {
            scores[n] = Math.exp(scores[n] - max);
            sum += scores[n];
        }
        for (int i = 0; i < d; i++) {
            double o = 0;
            for (int n = 0; n < t.count; n++) {
                o += scores[n] * t.values[n * d + i];
            }
            result[q + i] = (float) (o / sum);
        }
    }
}
