package dev.calibquant.gpu;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;

/**
 * Checking GPU results against the CPU reference, shared by {@code calibquant selftest} and the GPU tests.
 *
 * <p>Quantization: the GPU computes {@code x/σ + z} in fp32 and rounds half to even, the CPU decides each code in
 * exact arithmetic; codes may differ by one only where the exact quotient lies within the fp32 error of a rounding
 * boundary, and scales by at most 2 ulps (the GPU rounds {@code β − α} to fp32 before dividing by L).
 *
 * <p>Attention tolerance per output element, from the kernels' arithmetic (fp16 tensor-core products, fp32
 * accumulation; operands not exact in fp16 travel as an fp16 hi/lo pair, ~2^-22 relative): a score carries
 * {@code E ≤ (D + 4)·2^-23·‖q‖₁·Kmax/√D}; calibration is affine with slope ≤ 1 and its γ, δ carry E, moving a
 * calibrated score by at most another 2E; softmax turns a score error ε into an output error ≤ 2ε·Vmax; the weighted
 * sum of values adds {@code (2^-21 + (BN + N/BN + items + 8)·2^-24)·Vmax}. Hence
 * {@code tol = (6E + 2^-21 + (BN + N/BN + items + 8)·2^-24)·Vmax}.
 */
public final class GpuVerification {
    private GpuVerification() {}

    /** {@code layer} of {@code s} as the GPU holds it, copied into {@code arena}. */
    static LayerKvView download(Arena arena, GpuKvCache cache, GpuSequence s, int layer) {
        ModelGeometry g = cache.geometry();
        int kvh = g.kvHeads();
        int d = g.headDim();
        long fullBytes = 2L * kvh * s.fullCapacity() * d;
        MemorySegment k = arena.allocate(fullBytes);
        MemorySegment v = arena.allocate(fullBytes);
        cache.fullPool().buffer(0).copyTo(2 * s.fullOffset[layer], k, 0, fullBytes);
        cache.fullPool().buffer(1).copyTo(2 * s.fullOffset[layer], v, 0, fullBytes);
        List<QuantizedSpan> spans = new ArrayList<>();
        int bits = cache.config() == null ? 16 : cache.config().bits();
        for (int i = 0; i < s.quantizedSpans().size(); i++) {
            int tokens = s.quantizedSpans().get(i).length();
            long codeBytes = (long) kvh * tokens * d * bits / 8;
            MemorySegment kc = arena.allocate(codeBytes);
            MemorySegment vc = arena.allocate(codeBytes);
            cache.codePool().buffer(0).copyTo(s.codeOffset[layer][i], kc, 0, codeBytes);
            cache.codePool().buffer(1).copyTo(s.codeOffset[layer][i], vc, 0, codeBytes);
            MemorySegment[] sc = new MemorySegment[4];
            for (int j = 0; j < 4; j++) {
                sc[j] = arena.allocate(4L * kvh * d);
                cache.scalePool().buffer(j).copyTo(4 * s.scaleOffset[layer][i], sc[j], 0, 4L * kvh * d);
            }
            spans.add(new QuantizedSpan(tokens, kvh, d, bits, Granularity.PER_CHANNEL, Granularity.PER_CHANNEL,
                    kc, vc, sc[0], sc[1], sc[2], sc[3]));
        }
        return new DownloadedLayer(kvh, d, DType.FP16, s.fullTokens(layer), s.fullCapacity(), k, v, spans);
    }

    /** Largest scale difference in ulps of the CPU value, over two fp32 arrays of equal size. */
    public static double scaleUlps(MemorySegment cpu, MemorySegment gpu) {
        double worst = 0;
        for (long i = 0; i < cpu.byteSize() / 4; i++) {
            float a = cpu.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            float b = gpu.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            if (a != b) {
                worst = Math.max(worst, Float.isFinite(b) ? Math.abs(a - b) / Math.ulp(Math.max(Math.abs(a), Float.MIN_NORMAL))
                        : Double.POSITIVE_INFINITY);
            }
        }
        return worst;
    }

    /** Allowed scale difference, in ulps. */
    public static final double SCALE_ULPS = 2;

    /**
     * Codes that differ between CPU and GPU where the difference is not explained by fp32 rounding near a boundary.
     *
     * @param x the span's input, {@code [kvHeads][tokens][headDim]} as float
     * @return a description of the first unexplained difference, or {@code null} if there is none
     */
    public static String unexplainedCodeDifference(float[] x, int kvHeads, int tokens, int headDim, int bits,
            MemorySegment cpuCodes, MemorySegment gpuCodes, MemorySegment sigma, MemorySegment alpha) {
        int levels = (1 << bits) - 1;
        int perByte = 8 / bits;
        int rowBytes = headDim * bits / 8;
        for (int h = 0; h < kvHeads; h++) {
            for (int t = 0; t < tokens; t++) {
                for (int j = 0; j < headDim; j++) {
                    long byteAt = ((long) h * tokens + t) * rowBytes + j / perByte;
                    int shift = bits * (perByte - 1 - j % perByte);
                    int a = (cpuCodes.get(ValueLayout.JAVA_BYTE, byteAt) >> shift) & levels;
                    int b = (gpuCodes.get(ValueLayout.JAVA_BYTE, byteAt) >> shift) & levels;
                    if (a == b) {
                        continue;
                    }
                    float s = sigma.getAtIndex(ValueLayout.JAVA_FLOAT, (long) h * headDim + j);
                    float al = alpha.getAtIndex(ValueLayout.JAVA_FLOAT, (long) h * headDim + j);
                    float xv = x[(int) (((long) h * tokens + t) * headDim + j)];
                    if (Math.abs(a - b) != 1 || !nearRoundingBoundary(xv, s, al, levels)) {
                        return "head " + h + " token " + t + " channel " + j + ": GPU code " + b + ", CPU code " + a
                                + " (exact x/σ + z = " + (((double) xv - al) / s) + ")";
                    }
                }
            }
        }
        return null;
    }

    /**
     * Whether the code of {@code x} may legally be either neighbour: the exact {@code x/σ + z} lies within the fp32
     * error of a rounding boundary (~3 roundings of magnitude ≤ |x/σ| + |z| + L). Never for σ = 0 (code 0 exactly).
     */
    public static boolean nearRoundingBoundary(float x, float sigma, float alpha, int levels) {
        if (sigma == 0) {
            return false;
        }
        double u = ((double) x - alpha) / sigma;
        double slack = 0x1p-21 * (Math.abs(x / sigma) + Math.abs(alpha / sigma) + levels);
        return Math.abs(u - Math.floor(u) - 0.5) <= slack;
    }

    /** The tolerance above for one output row (one sequence, one query head). */
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
            int levels = (1 << s.bits()) - 1;
            for (int i = 0; i < s.kvHeads() * d; i++) {
                float sk = s.keyScale().getAtIndex(ValueLayout.JAVA_FLOAT, i);
                float ak = s.keyOffset().getAtIndex(ValueLayout.JAVA_FLOAT, i);
                float sv = s.valueScale().getAtIndex(ValueLayout.JAVA_FLOAT, i);
                float av = s.valueOffset().getAtIndex(ValueLayout.JAVA_FLOAT, i);
                kmax = Math.max(kmax, Math.max(Math.abs(ak), Math.abs(ak + levels * sk)));
                vmax = Math.max(vmax, Math.max(Math.abs(av), Math.abs(av + levels * sv)));
            }
        }
        return new double[] {kmax, vmax};
    }
}
