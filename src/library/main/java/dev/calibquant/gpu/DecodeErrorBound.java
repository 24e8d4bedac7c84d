package dev.calibquant.gpu;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.ValueLayout;

/**
 * How far a GPU decode output may lie from the CPU reference ({@link dev.calibquant.attention.ReferenceAttention},
 * double precision) on the same cache bytes and the same fp16 queries, derived from the kernels' arithmetic (fp16
 * tensor-core products, fp32 accumulation; operands not exact in fp16 travel as an fp16 hi/lo pair, ~2^-22
 * relative). A score carries {@code E ≤ (D + 4)·2^-23·‖q‖₁·Kmax/√D}; calibration is affine with slope ≤ 1 and its
 * γ, δ carry E, moving a calibrated score by at most another 2E; softmax turns a score error ε into an output error
 * ≤ 2ε·Vmax; the weighted sum of values adds {@code (2^-21 + (BN + N/BN + items + 8)·2^-24)·Vmax}. Hence, per output
 * element, {@code tol = (6E + 2^-21 + (BN + N/BN + items + 8)·2^-24)·Vmax}, with Kmax and Vmax the largest key and
 * value magnitudes the row attends to (rebuilt quantized ones included), N its tokens, BN the kernels' token block.
 */
public final class DecodeErrorBound {
    private DecodeErrorBound() {}

    /**
     * The bound for one output row (one sequence, one query head).
     *
     * @param query the row's query as the GPU read it (fp16 values)
     * @param view the sequence's layer in host memory ({@link DeviceKvCache#download})
     * @param step what the step launched ({@link DeviceDecodeAttention#lastStep})
     */
    public static double attentionTolerance(float[] query, LayerKvView view, DecodeStepInfo step) {
        return attentionTolerance(query, view, step.workItems(), step.tokenBlock());
    }

    /** The bound for one output row of a step of {@code workItems} items and token block {@code block}. */
    public static double attentionTolerance(float[] query, LayerKvView view, int workItems, int block) {
        int d = view.headDim();
        double q1 = 0;
        for (float v : query) {
            q1 += Math.abs(v);
        }
        double[] kv = maxAbs(view);
        int n = view.fullTokens() + view.visualSpans().stream().mapToInt(QuantizedSpan::tokens).sum();
        double e = (d + 4) * 0x1p-23 * q1 * kv[0] / Math.sqrt(d);
        return (6 * e + 0x1p-21 + (block + (double) n / block + workItems + 8) * 0x1p-24) * kv[1];
    }

    /** {Kmax, Vmax}: the largest magnitude of any key and value the sequence attends to (rebuilt ones included). */
    static double[] maxAbs(LayerKvView view) {
        double kmax = 0;
        double vmax = 0;
        int d = view.headDim();
        for (int h = 0; h < view.kvHeads(); h++) {
            for (int r = 0; r < view.fullTokens(); r++) {
                for (int j = 0; j < d; j++) {
                    long at = 2 * (((long) h * view.fullCapacity() + r) * d + j);
                    kmax = Math.max(kmax, Math.abs(Float.float16ToFloat(view.fullKeys().get(ValueLayout.JAVA_SHORT_UNALIGNED, at))));
                    vmax = Math.max(vmax, Math.abs(Float.float16ToFloat(view.fullValues().get(ValueLayout.JAVA_SHORT_UNALIGNED, at))));
                }
            }
        }
        for (QuantizedSpan s : view.visualSpans()) {
            // a wide key channel tops out at α + 1.5σ (its stored scale weighs the high bit); values have their width
            double keyTop = s.wideKeys() != null ? 1.5 : (1 << s.bits()) - 1; // wide keys are 1-bit keys
            int valueTop = (1 << s.valueBits()) - 1;
            int size = s.paramType().byteSize(); // per channel or per token: every stored (σ, α) pair counts
            for (long i = 0; i < s.keyScale().byteSize() / size; i++) {
                float sk = s.param(s.keyScale(), i);
                float ak = s.param(s.keyOffset(), i);
                kmax = Math.max(kmax, Math.max(Math.abs(ak), Math.abs(ak + keyTop * sk)));
            }
            for (long i = 0; i < s.valueScale().byteSize() / size; i++) {
                float sv = s.param(s.valueScale(), i);
                float av = s.param(s.valueOffset(), i);
                vmax = Math.max(vmax, Math.max(Math.abs(av), Math.abs(av + valueTop * sv)));
            }
        }
        return new double[] {kmax, vmax};
    }
}
