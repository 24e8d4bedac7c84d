package dev.calibquant.selftest;

import dev.calibquant.gpu.DecodeErrorBound;

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
 * <p>Attention: {@link DecodeErrorBound}.
 */
public final class GpuVerification {
    private GpuVerification() {}

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
}
