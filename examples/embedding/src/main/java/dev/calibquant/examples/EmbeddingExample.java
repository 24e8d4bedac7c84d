package dev.calibquant.examples;

import dev.calibquant.attention.CpuCalibQuantAttention;
import dev.calibquant.attention.ReferenceAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.cuda.Cuda;
import dev.calibquant.cuda.CudaAvailability;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.gpu.DecodeErrorBound;
import dev.calibquant.gpu.DeviceDecodeAttention;
import dev.calibquant.gpu.DeviceKvCache;
import dev.calibquant.cuda.UnsupportedDeviceException;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.Elements;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.List;
import java.util.Random;

/**
 * Embedding CalibQuant in an application: a KV cache whose image tokens are kept at 1 bit, one sequence prefilled,
 * one decode step appended and attended, and the answer checked against the library's double-precision reference.
 * Runs on the GPU when one is usable, otherwise on the CPU, and says which and why. Exits 1 if the check fails.
 */
public final class EmbeddingExample {
    // 8 query heads sharing 2 KV heads (grouped-query attention); head dim 128, one the GPU kernels are built for.
    private static final ModelGeometry GEOMETRY = new ModelGeometry(1, 8, 2, 128);
    // A multimodal prompt: 16 system tokens, 256 image tokens, 8 text tokens. Only the image span is quantized:
    // it is most of the cache and tolerates 1 bit; the few text tokens stay in full precision.
    private static final int PREFIX = 16, VISUAL = 256, TEXT = 8, PROMPT = PREFIX + VISUAL + TEXT;
    private static final List<TokenSpan> VISUAL_SPANS = List.of(new TokenSpan(PREFIX, PREFIX + VISUAL));
    private static final long BYTE_LIMIT = 64L << 20; // the cache refuses (throws) rather than grow past this
    private static final QuantConfig ONE_BIT = QuantConfig.defaults(1); // 1-bit codes, calibrated scores
    private static final int QH = GEOMETRY.queryHeads(), KVH = GEOMETRY.kvHeads(), D = GEOMETRY.headDim();

    /** What a model would hand over: fp16, little-endian, in the layouts the API documents. */
    private record Inputs(MemorySegment keys, MemorySegment values, MemorySegment newKey, MemorySegment newValue,
            float[] q, MemorySegment queries, MemorySegment out) {}

    public static void main(String[] args) {
        Random random = new Random(42); // seeded: every run sees the same numbers
        boolean ok = false;
        try (Arena arena = Arena.ofConfined()) {
            float[] q = normal(random, QH * D);
            Inputs in = new Inputs(
                    fp16(arena, normal(random, KVH * PROMPT * D)), // prefill keys [kvHeads][prompt][headDim]
                    fp16(arena, normal(random, KVH * PROMPT * D)), // prefill values, same layout
                    fp16(arena, normal(random, KVH * D)),          // one decode step's key [batch=1][kvHeads][headDim]
                    fp16(arena, normal(random, KVH * D)),          // and value
                    q, fp16(arena, q),                             // queries [batch=1][queryHeads][headDim]
                    arena.allocate(4L * QH * D, 4));               // output, fp32 [batch=1][queryHeads][headDim]
            String why = gpuUnusableReason();
            if (why == null) {
                // The cache owns the device memory and the kernels; the context stays ours: close the cache first.
                try (CudaContext ctx = Cuda.device(0).openContext();
                        DeviceKvCache cache = DeviceKvCache.open(ctx, GEOMETRY, BYTE_LIMIT)) {
                    System.out.println("running on the GPU: " + cache.device() + ", kernels " + cache.kernelTarget());
                    ok = onGpu(cache, in);
                } catch (UnsupportedDeviceException e) { // e.g. a GPU too old for the shipped kernels
                    why = "the GPU cannot run the shipped kernels: " + e.getMessage();
                }
            }
            if (why != null) {
                System.out.println("running on the CPU: " + why);
                ok = onCpu(in);
            }
        }
        System.exit(ok ? 0 : 1);
    }

    /** Why the GPU path cannot be used here (no driver, no device, an unsupported shape), or null when it can. */
    private static String gpuUnusableReason() {
        CudaAvailability a = Cuda.availability(); // probes the driver once; never throws
        return a.available() ? DeviceKvCache.unsupportedReason(GEOMETRY, DType.FP16).orElse(null) : a.reason();
    }

    private static boolean onGpu(DeviceKvCache cache, Inputs in) {
        DeviceDecodeAttention attention = cache.attention(ONE_BIT.calibration()); // owned by the cache
        try (Arena arena = Arena.ofConfined(); Sequence s = prefillAndAppend(cache.manager(), in)) {
            attention.decode(0, List.of(s), in.queries(), DType.FP16, QH, in.out()); // output lands in host memory
            report(in.out(), cache.manager());
            System.out.println("device memory reserved: " + cache.deviceBytes() + " bytes");
            // Check: the reference on a host copy of the very bytes the GPU read. The kernels round differently
            // (fp16 products, fp32 sums), so the library derives a per-row bound from their arithmetic.
            LayerKvView copy = cache.download(s, 0, arena);
            MemorySegment ref = arena.allocate(in.out().byteSize(), 4);
            new ReferenceAttention(ONE_BIT.calibration()).decode(List.of(copy), in.queries(), DType.FP16, QH, ref);
            double worst = 0; // largest |gpu - reference| / bound over all outputs
            for (int h = 0; h < QH; h++) {
                double bound = DecodeErrorBound.attentionTolerance(Arrays.copyOfRange(in.q(), h * D, h * D + D),
                        copy, attention.lastStep());
                for (int j = h * D; j < h * D + D; j++) {
                    double diff = Math.abs(in.out().getAtIndex(ValueLayout.JAVA_FLOAT, j)
                            - ref.getAtIndex(ValueLayout.JAVA_FLOAT, j));
                    worst = Math.max(worst, Double.isNaN(diff) ? Double.POSITIVE_INFINITY : diff / bound);
                }
            }
            System.out.printf("GPU vs CPU reference: largest difference is %.3f of the documented error bound%n", worst);
            return worst <= 1;
        } // the sequence is closed here, before the cache: closing the cache with sequences open reports a leak
    }

    private static boolean onCpu(Inputs in) {
        try (KvCacheManager manager = KvCacheManager.onHost(GEOMETRY, DType.FP16, BYTE_LIMIT);
                Sequence s = prefillAndAppend(manager, in);
                Arena arena = Arena.ofConfined()) {
            List<LayerKvView> batch = List.of(s.layer(0)); // a snapshot: take it after the append
            new CpuCalibQuantAttention(ONE_BIT.calibration()).decode(batch, in.queries(), DType.FP16, QH, in.out());
            report(in.out(), manager);
            // Check the fast path (fp32, vectorized) against the double-precision reference on the same cache.
            MemorySegment ref = arena.allocate(in.out().byteSize(), 4);
            new ReferenceAttention(ONE_BIT.calibration()).decode(batch, in.queries(), DType.FP16, QH, ref);
            double maxDiff = 0, maxRef = 0;
            for (int j = 0; j < QH * D; j++) {
                float r = ref.getAtIndex(ValueLayout.JAVA_FLOAT, j);
                double diff = Math.abs(in.out().getAtIndex(ValueLayout.JAVA_FLOAT, j) - r);
                maxDiff = Math.max(maxDiff, Double.isNaN(diff) ? Double.POSITIVE_INFINITY : diff);
                maxRef = Math.max(maxRef, Math.abs(r));
            }
            double tolerance = 1e-3 * maxRef; // loose: fp32 rounding is orders of magnitude below it
            System.out.printf("CPU fast path vs reference: largest difference %.3g, %.3g of the tolerance"
                    + " (1e-3 x largest |output| %.3g)%n", maxDiff, maxDiff / tolerance, maxRef);
            return maxDiff <= tolerance;
        }
    }

    /** A sequence with layer 0 prefilled (image span quantized to 1 bit) and one decode step's key/value appended. */
    private static Sequence prefillAndAppend(KvCacheManager manager, Inputs in) {
        Sequence s = manager.createSequence(PROMPT, VISUAL_SPANS, ONE_BIT);
        try {
            s.fill(0, in.keys(), in.values(), DType.FP16);
            // The batch append: one call for every sequence decoding this step (one upload and launch on a GPU).
            manager.append(0, List.of(s), in.newKey(), in.newValue(), DType.FP16);
            return s;
        } catch (RuntimeException e) {
            s.close(); // don't leak it: the manager would report it when closed
            throw e;
        }
    }

    private static void report(MemorySegment out, KvCacheManager manager) {
        float[] head0 = new float[4];
        MemorySegment.copy(out, ValueLayout.JAVA_FLOAT, 0, head0, 0, head0.length);
        System.out.println("output, query head 0, first values: " + Arrays.toString(head0));
        System.out.println("cache memory: " + manager.usage());
    }

    /** n samples of N(0,1), rounded to fp16 so the float values are exactly what the cache and kernels see. */
    private static float[] normal(Random random, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = Float.float16ToFloat(Float.floatToFloat16((float) random.nextGaussian()));
        }
        return v;
    }

    /** The values as little-endian fp16 in off-heap memory, the form the library takes. */
    private static MemorySegment fp16(Arena arena, float[] v) {
        return Elements.allocateFrom(arena, DType.FP16, v);
    }
}
