package dev.calibquant.model;

import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.stream.IntStream;

/**
 * The decoder: prefill computes every prompt position with exact causal attention; a decode step runs one token
 * against a {@link Sequence} of the KV cache through a {@link DecodeAttention}. fp32 arithmetic throughout.
 */
final class LanguageModel {
    private record Layer(float[] attnNorm, Linear q, Linear k, Linear v, Linear o, float[] mlpNorm, Linear gate,
            Linear up, Linear down) {
    }

    private final ModelConfig config;
    private final float[] embed;
    private final Layer[] layers;
    private final float[] norm;
    private final Linear lmHead;
    private final Rope rope;

    LanguageModel(ModelWeights w) {
        ModelConfig c = w.config();
        this.config = c;
        int h = c.hidden();
        int q = c.queryHeads() * c.headDim();
        int kv = c.kvHeads() * c.headDim();
        embed = w.get("language.embed.weight");
        layers = new Layer[c.layers()];
        for (int i = 0; i < layers.length; i++) {
            String b = "language.layers." + i + ".";
            layers[i] = new Layer(w.get(b + "attn_norm.weight"),
                    new Linear(w.get(b + "attn.q.weight"), null, q, h),
                    new Linear(w.get(b + "attn.k.weight"), null, kv, h),
                    new Linear(w.get(b + "attn.v.weight"), null, kv, h),
                    new Linear(w.get(b + "attn.o.weight"), null, h, q),
                    w.get(b + "mlp_norm.weight"),
                    new Linear(w.get(b + "mlp.gate.weight"), null, c.intermediate(), h),
                    new Linear(w.get(b + "mlp.up.weight"), null, c.intermediate(), h),
                    new Linear(w.get(b + "mlp.down.weight"), null, h, c.intermediate()));
        }
        norm = w.get("language.norm.weight");
        lmHead = new Linear(w.get("language.lm_head.weight"), null, c.vocabSize(), h);
        rope = new Rope(c.headDim(), c.ropeTheta());
    }

    /**
     * Runs the prompt: token embeddings, except the rows of {@code visualSpan}, which are {@code visual}
     * ({@code [span length][hidden]}).
     */
    Prefill prefill(int[] tokens, float[] visual, TokenSpan visualSpan) {
        int t = tokens.length;
        int h = config.hidden();
        int headDim = config.headDim();
        int kvHeads = config.kvHeads();
        int queryHeads = config.queryHeads();
        int group = queryHeads / kvHeads;
        if (visual.length != visualSpan.length() * h || visualSpan.end() > t) {
            throw new IllegalArgumentException("visual embeddings of " + visual.length + " values do not fill span "
                    + visualSpan + " of width " + h + " in a prompt of " + t + " tokens");
        }
        float[] x = new float[t * h];
        for (int i = 0; i < t; i++) {
            if (i >= visualSpan.start() && i < visualSpan.end()) {
                System.arraycopy(visual, (i - visualSpan.start()) * h, x, i * h, h);
            } else {
                embedInto(tokens[i], x, i * h);
            }
        }
        float[][] tables = new float[t][];
        for (int i = 0; i < t; i++) {
            tables[i] = rope.table(i);
        }
        float[][] keys = new float[layers.length][];
        float[][] values = new float[layers.length][];
        for (int l = 0; l < layers.length; l++) {
            Layer layer = layers[l];
            float[] normed = Ops.rmsNorm(x, h, layer.attnNorm, config.rmsEps());
            float[] q = layer.q.apply(normed, t);
            float[] k = layer.k.apply(normed, t);
            float[] v = layer.v.apply(normed, t);
            for (int i = 0; i < t; i++) {
                rope.rotate(q, i * queryHeads * headDim, queryHeads, tables[i]);
                rope.rotate(k, i * kvHeads * headDim, kvHeads, tables[i]);
            }
            keys[l] = headMajor(k, t, kvHeads, headDim);
            values[l] = headMajor(v, t, kvHeads, headDim);
            float[] kl = keys[l];
            float[] vl = values[l];
            float[] attended = new float[t * queryHeads * headDim];
            IntStream.range(0, queryHeads).parallel().forEach(head -> {
                int kvOffset = (head / group) * t * headDim;
                Ops.attendHead(q, queryHeads * headDim, head * headDim, kl, headDim, kvOffset, vl, headDim, kvOffset,
                        t, t, headDim, true, attended, queryHeads * headDim, head * headDim);
            });
            Ops.addInPlace(x, layer.o.apply(attended, t));
            mlp(layer, x, t);
        }
        float[] logits = lmHead.apply(Ops.rmsNorm(x, h, norm, config.rmsEps()), t);
        return new Prefill(t, keys, values, logits, config.vocabSize());
    }

    /**
     * One decode step: {@code token} at {@code position}; appends its key and value to every layer of
     * {@code sequence} (which must hold positions {@code 0..position−1}), attends through {@code attention}, and
     * returns the next-token logits.
     */
    float[] step(int token, int position, Sequence sequence, DType cacheType, DecodeAttention attention) {
        int h = config.hidden();
        int headDim = config.headDim();
        int kvHeads = config.kvHeads();
        int queryHeads = config.queryHeads();
        float[] x = new float[h];
        embedInto(token, x, 0);
        float[] table = rope.table(position);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment key = arena.allocate((long) kvHeads * headDim * cacheType.byteSize());
            MemorySegment value = arena.allocate((long) kvHeads * headDim * cacheType.byteSize());
            MemorySegment query = arena.allocate((long) queryHeads * headDim * Float.BYTES);
            MemorySegment out = arena.allocate((long) queryHeads * headDim * Float.BYTES);
            for (int l = 0; l < layers.length; l++) {
                Layer layer = layers[l];
                float[] normed = Ops.rmsNorm(x, h, layer.attnNorm, config.rmsEps());
                float[] q = layer.q.apply(normed, 1);
                float[] k = layer.k.apply(normed, 1);
                float[] v = layer.v.apply(normed, 1);
                rope.rotate(q, 0, queryHeads, table);
                rope.rotate(k, 0, kvHeads, table);
                for (int i = 0; i < k.length; i++) {
                    Elements.write(key, cacheType, i, k[i]);
                    Elements.write(value, cacheType, i, v[i]);
                }
                sequence.append(l, key, value, cacheType);
                MemorySegment.copy(q, 0, query, Elements.FLOAT_LE, 0, q.length);
                List<LayerKvView> batch = List.of(sequence.layer(l));
                attention.decode(batch, query, DType.FP32, queryHeads, out);
                float[] attended = new float[queryHeads * headDim];
                MemorySegment.copy(out, Elements.FLOAT_LE, 0, attended, 0, attended.length);
                Ops.addInPlace(x, layer.o.apply(attended, 1));
                mlp(layer, x, 1);
            }
        }
        return lmHead.apply(Ops.rmsNorm(x, h, norm, config.rmsEps()), 1);
    }

    private void mlp(Layer layer, float[] x, int rows) {
        float[] normed = Ops.rmsNorm(x, config.hidden(), layer.mlpNorm, config.rmsEps());
        float[] gate = layer.gate.apply(normed, rows);
        Ops.swiglu(gate, layer.up.apply(normed, rows));
        Ops.addInPlace(x, layer.down.apply(gate, rows));
    }

    private void embedInto(int token, float[] x, int offset) {
        if (token < 0 || token >= config.vocabSize()) {
            throw new IllegalArgumentException("token id " + token + " is outside the vocabulary of "
                    + config.vocabSize());
        }
        System.arraycopy(embed, token * config.hidden(), x, offset, config.hidden());
    }

    /** {@code [tokens][heads][dim]} → {@code [heads][tokens][dim]}. */
    private static float[] headMajor(float[] x, int tokens, int heads, int dim) {
        float[] y = new float[x.length];
        for (int t = 0; t < tokens; t++) {
            for (int h = 0; h < heads; h++) {
                System.arraycopy(x, (t * heads + h) * dim, y, (h * tokens + t) * dim, dim);
            }
        }
        return y;
    }
}
