package dev.calibquant.gpu;

import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * {@link DecodeAttention} on the GPU over caches that live on the host (the {@link dev.calibquant.cache.KvCacheManager}):
 * each call uploads the batch's layer into a {@link GpuKvCache} it keeps for reuse, runs the GPU kernels, and
 * returns the output. The upload costs what reading the cache costs, so this suits the demo and tools; a serving
 * loop keeps its cache on the device ({@link GpuKvCache}, {@link GpuDecodeAttention}) instead.
 *
 * <p>Accepts fp16 caches with per-channel quantized spans of 1, 2 or 4 bits (or none). Queries of another type are
 * rounded to fp16, as the kernels read them.
 */
public final class GpuViewAttention implements DecodeAttention, AutoCloseable {
    private final CudaContext context;
    private final KernelCatalog catalog;
    private final Calibration calibration;
    private GpuKvCache cache;
    private GpuDecodeAttention attention;
    private GpuKvCache.Capacity capacity;
    private String cacheKey;

    public GpuViewAttention(CudaContext context, KernelCatalog catalog, Calibration calibration) {
        this.context = context;
        this.catalog = catalog;
        this.calibration = calibration;
    }

    @Override
    public synchronized void decode(List<? extends LayerKvView> batch, MemorySegment queries, DType queryType,
            int queryHeads, MemorySegment out) {
        if (batch.isEmpty()) {
            throw new InvalidShapeException("decode of an empty batch");
        }
        LayerKvView first = batch.getFirst();
        int kvh = first.kvHeads();
        int d = first.headDim();
        int bits = 0;
        long full = 0;
        long visual = 0;
        long spans = 0;
        for (LayerKvView v : batch) {
            if (v.kvHeads() != kvh || v.headDim() != d) {
                throw new InvalidShapeException("the batch mixes geometries: " + kvh + "×" + d + " and " + v.kvHeads() + "×" + v.headDim());
            }
            if (v.dtype() != DType.FP16) {
                throw new IllegalArgumentException("the GPU path reads fp16 caches; this one is " + v.dtype());
            }
            for (QuantizedSpan q : v.visualSpans()) {
                if (q.keyGranularity() != Granularity.PER_CHANNEL || q.valueGranularity() != Granularity.PER_CHANNEL) {
                    throw new IllegalArgumentException("the GPU kernels implement per-channel statistics, not "
                            + q.keyGranularity() + "/" + q.valueGranularity());
                }
                if (bits != 0 && q.bits() != bits) {
                    throw new IllegalArgumentException("the batch mixes " + bits + "- and " + q.bits() + "-bit spans");
                }
                bits = q.bits();
                visual += q.tokens();
                spans++;
            }
            full += Math.max(1, v.fullTokens());
        }
        if (queryHeads <= 0 || queryHeads % kvh != 0) {
            throw new InvalidShapeException(queryHeads + " query heads is not a multiple of " + kvh + " KV heads");
        }
        long elements = (long) batch.size() * queryHeads * d;
        if (queries.byteSize() != elements * queryType.byteSize() || out.byteSize() != elements * 4) {
            throw new InvalidShapeException("queries hold " + queries.byteSize() + " bytes and out " + out.byteSize()
                    + "; expected " + elements * queryType.byteSize() + " and " + elements * 4);
        }
        QuantConfig config = bits == 0 ? null : QuantConfig.defaults(bits).withCalibrate(calibration.enabled())
                .withTaus(calibration.tauMin(), calibration.tauMax()).withPolicy(calibration.policy());
        ModelGeometry g = new ModelGeometry(1, queryHeads, kvh, d);
        ensureCache(g, config, full, visual, spans);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment q16 = Fp16Check.toFiniteFp16Queries(arena, queries, queryType, queryHeads, d);
            List<GpuSequence> seqs = new ArrayList<>();
            try {
                for (LayerKvView v : batch) {
                    seqs.add(cache.load(v));
                }
                attention.decode(0, seqs, q16, out);
            } finally {
                seqs.forEach(GpuSequence::close);
            }
        }
    }

    private void ensureCache(ModelGeometry g, QuantConfig config, long full, long visual, long spans) {
        String key = g + "/" + config;
        GpuKvCache.Capacity need = new GpuKvCache.Capacity(full + 64 * spans + 64, visual + 64 * spans, spans);
        if (cache != null && key.equals(cacheKey) && capacity.fullPrecisionTokens() >= need.fullPrecisionTokens()
                && capacity.visualTokens() >= need.visualTokens() && capacity.visualSpans() >= need.visualSpans()) {
            return;
        }
        closeCache();
        // Half again as large, so a batch that grows one token a step does not rebuild the pools every step.
        capacity = new GpuKvCache.Capacity(need.fullPrecisionTokens() * 3 / 2, need.visualTokens() * 3 / 2,
                Math.max(1, need.visualSpans() * 3 / 2));
        cache = new GpuKvCache(context, catalog, g, config, capacity);
        attention = new GpuDecodeAttention(cache);
        cacheKey = key;
    }

    private void closeCache() {
        if (attention != null) {
            attention.close();
            attention = null;
        }
        if (cache != null) {
            cache.close();
            cache = null;
        }
        capacity = null;
    }

    @Override
    public synchronized void close() {
        closeCache();
    }
}
