package dev.calibquant.selftest;

import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.CudaStream;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.kernels.CalibQuantKernels;
import dev.calibquant.kernels.CalibQuantKernels.CachePointers;
import dev.calibquant.kernels.QuantizePlan;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.kernels.KernelManifest;
import dev.calibquant.quant.ChannelQuantizer;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.KvSlice;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

/**
 * Checks {@code quantize_pack} at 8 bits, which no GPU cache uses (the decode kernels stop at 4), by launching it
 * directly on a few spans (by default 1, 37 and 300 tokens) and comparing with {@link ChannelQuantizer}.
 */
public final class QuantizePackCheck implements KernelCheck {

    @Override
    public boolean handles(KernelManifest.Kernel kernel) {
        return kernel.function().equals("quantize_pack") && !kernel.name().startsWith("x_")
                && kernel.constexprs().get("BITS") instanceof Number n && n.intValue() == 8;
    }

    /** Spans {@code [starts[i], starts[i] + lengths[i])} of one prompt of {@code prompt} tokens. */
    public record Spans(int kvHeads, int prompt, int[] starts, int[] lengths) {
        @Override
        public String toString() {
            return "kvh" + kvHeads + " prompt" + prompt + " starts" + java.util.Arrays.toString(starts) + " lengths"
                    + java.util.Arrays.toString(lengths);
        }
    }

    /**
     * What one launch fed the kernel and got back, per span: codes {@code [kvh][tokens][D]} (bytes, one per element
     * at 8 bits), and σK, αK, σV, αV {@code [kvh][D]}; valid only during the observer's call.
     */
    public record Observed(Spans spans, float[] keys, float[] values, List<MemorySegment[]> codes, List<MemorySegment[]> scales) {}

    public static final Spans DEFAULT_SPANS = new Spans(2, 400, new int[] {3, 10, 60}, new int[] {1, 37, 300});

    @Override
    public Result run(KernelCatalog catalog, KernelManifest.Kernel kernel, Random random) {
        return run(catalog, kernel, random, DEFAULT_SPANS, o -> {});
    }

    public static Result run(KernelCatalog catalog, KernelManifest.Kernel kernel, Random random, Spans layout,
            java.util.function.Consumer<Observed> observer) {
        int d = ((Number) kernel.constexprs().get("D")).intValue();
        int bits = 8;
        int kvh = layout.kvHeads();
        int[] starts = layout.starts();
        int[] lengths = layout.lengths();
        int spans = lengths.length;
        int prompt = layout.prompt();
        QuantConfig config = QuantConfig.defaults(bits);
        CudaContext ctx = catalog.context();
        float[] k = GpuScenario.normal(random, kvh, prompt, d, 4);
        float[] v = GpuScenario.normal(random, kvh, prompt, d, 0);
        CalibQuantKernels kernels = new CalibQuantKernels(catalog, d, bits);
        long[] codeOff = new long[spans];
        long[] scaleOff = new long[spans];
        long codeBytes = 0;
        for (int i = 0; i < spans; i++) {
            codeOff[i] = codeBytes;
            codeBytes += roundUp16((long) kvh * lengths[i] * d);
            scaleOff[i] = (long) i * roundUp16((long) kvh * d);
        }
        long scaleFloats = spans * roundUp16((long) kvh * d);
        try (Arena arena = Arena.ofConfined(); CudaStream stream = ctx.createStream();
                DeviceBuffer kin = ctx.allocate(2L * k.length); DeviceBuffer vin = ctx.allocate(2L * v.length);
                DeviceBuffer kc = ctx.allocate(codeBytes); DeviceBuffer vc = ctx.allocate(codeBytes);
                DeviceBuffer ks = ctx.allocate(4 * scaleFloats); DeviceBuffer ka = ctx.allocate(4 * scaleFloats);
                DeviceBuffer vs = ctx.allocate(4 * scaleFloats); DeviceBuffer va = ctx.allocate(4 * scaleFloats);
                QuantizeScratch scratch = new QuantizeScratch(ctx, kernels.planQuantize(work(layout, codeOff, scaleOff),
                        kvh))) {
            kin.copyFrom(GpuScenario.fp16(arena, k));
            vin.copyFrom(GpuScenario.fp16(arena, v));
            kc.fill((byte) 0xa5);
            vc.fill((byte) 0xa5);
            for (DeviceBuffer b : new DeviceBuffer[] {ks, ka, vs, va}) {
                b.fill32(Float.floatToRawIntBits(Float.NaN), 0, scaleFloats);
            }
            scratch.launch(kernels, kin, vin, CachePointers.atStart(kin, vin, kc, vc, ks, ka, vs, va), config.keyClip(),
                    config.valueClip(), stream);
            stream.synchronize();
            List<MemorySegment[]> codes = new ArrayList<>();
            List<MemorySegment[]> scales = new ArrayList<>();
            for (int i = 0; i < spans; i++) {
                long n = (long) kvh * lengths[i] * d;
                MemorySegment gk = arena.allocate(n);
                MemorySegment gv = arena.allocate(n);
                kc.copyTo(codeOff[i], gk, 0, n);
                vc.copyTo(codeOff[i], gv, 0, n);
                codes.add(new MemorySegment[] {gk, gv});
                MemorySegment[] sc = new MemorySegment[4];
                DeviceBuffer[] src = {ks, ka, vs, va};
                for (int j = 0; j < 4; j++) {
                    sc[j] = arena.allocate(4L * kvh * d);
                    src[j].copyTo(4 * scaleOff[i], sc[j], 0, 4L * kvh * d);
                }
                scales.add(sc);
            }
            observer.accept(new Observed(layout, k, v, codes, scales));
            double worstUlps = 0;
            MemorySegment kin16 = GpuScenario.fp16(arena, k);
            MemorySegment vin16 = GpuScenario.fp16(arena, v);
            for (int i = 0; i < spans; i++) {
                QuantizedSpan cpu = ChannelQuantizer.quantize(config,
                        KvSlice.ofTokens(kin16, DType.FP16, kvh, prompt, d, starts[i], starts[i] + lengths[i]),
                        KvSlice.ofTokens(vin16, DType.FP16, kvh, prompt, d, starts[i], starts[i] + lengths[i]), arena);
                MemorySegment gk = codes.get(i)[0];
                MemorySegment gv = codes.get(i)[1];
                MemorySegment[] sc = scales.get(i);
                worstUlps = Math.max(worstUlps, Math.max(
                        Math.max(GpuVerification.scaleUlps(cpu.keyScale(), sc[0]), GpuVerification.scaleUlps(cpu.keyOffset(), sc[1])),
                        Math.max(GpuVerification.scaleUlps(cpu.valueScale(), sc[2]), GpuVerification.scaleUlps(cpu.valueOffset(), sc[3]))));
                String bad = GpuVerification.unexplainedCodeDifference(slice(k, kvh, prompt, d, starts[i], lengths[i]), kvh,
                        lengths[i], d, bits, cpu.keyCodes(), gk, cpu.keyScale(), cpu.keyOffset());
                if (bad == null) {
                    bad = GpuVerification.unexplainedCodeDifference(slice(v, kvh, prompt, d, starts[i], lengths[i]), kvh,
                            lengths[i], d, bits, cpu.valueCodes(), gv, cpu.valueScale(), cpu.valueOffset());
                }
                if (bad != null || worstUlps > GpuVerification.SCALE_ULPS) {
                    return new Result(false, worstUlps, GpuVerification.SCALE_ULPS, "span of " + lengths[i] + ": "
                            + (bad != null ? bad : "scales differ by " + worstUlps + " ulp"));
                }
            }
            return new Result(true, worstUlps, GpuVerification.SCALE_ULPS,
                    "scale difference in ulp; codes equal but at fp32 rounding ties; spans of "
                            + java.util.Arrays.toString(lengths) + " tokens");
        }
    }

    private static float[] slice(float[] x, int kvh, int tokens, int d, int start, int len) {
        float[] out = new float[kvh * len * d];
        for (int h = 0; h < kvh; h++) {
            System.arraycopy(x, (h * tokens + start) * d, out, h * len * d, len * d);
        }
        return out;
    }

    private static List<QuantizePlan.Span> work(Spans layout, long[] codeOff, long[] scaleOff) {
        List<QuantizePlan.Span> work = new ArrayList<>();
        for (int i = 0; i < layout.lengths().length; i++) {
            work.add(new QuantizePlan.Span(0, layout.prompt(), layout.starts()[i], layout.lengths()[i], codeOff[i],
                    scaleOff[i]));
        }
        return work;
    }

    /** Offsets in the kernels' tables are multiples of 16 elements. */
    private static long roundUp16(long elements) {
        return Math.ceilDiv(elements, 16) * 16;
    }
}
