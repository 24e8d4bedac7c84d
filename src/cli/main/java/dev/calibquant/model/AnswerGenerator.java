package dev.calibquant.model;

import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.ChannelQuantizer;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;

/**
 * Greedy decoding through the KV cache, as CalibQuant prescribes: prefill (exact attention) gives the first token
 * and every layer's keys and values; these fill a {@link Sequence} whose visual span is quantized with the given
 * {@link dev.calibquant.quant.QuantConfig} (or kept in the cache's dtype when it is null); each later token is one
 * decode step whose attention reads that cache.
 */
public final class AnswerGenerator {
    private final SceneModel model;
    private final KvCacheManager cache;
    private final DecodeAttentionFactory attention;
    private final int maxTokens;
    /** One decode attention per calibration, made on first use (a GPU one may be costly to make). */
    private final java.util.Map<Calibration, DecodeAttention> attentions =
            new java.util.concurrent.ConcurrentHashMap<>();

    /**
     * @param cache where sequences live; its geometry must be the model's
     * @param maxTokens the most answer tokens generated, {@code <eos>} included
     */
    public AnswerGenerator(SceneModel model, KvCacheManager cache, DecodeAttentionFactory attention, int maxTokens) {
        this.model = Objects.requireNonNull(model, "model");
        this.cache = Objects.requireNonNull(cache, "cache");
        this.attention = Objects.requireNonNull(attention, "attention");
        ModelGeometry expected = model.config().geometry();
        if (!cache.geometry().equals(expected)) {
            throw new IllegalArgumentException("the cache has geometry " + cache.geometry() + ", the model "
                    + expected);
        }
        if (maxTokens < 1) {
            throw new IllegalArgumentException("maxTokens must be >= 1, got " + maxTokens);
        }
        this.maxTokens = maxTokens;
    }

    /** Greedy answer from a prefill; {@code quant} null keeps the visual span in full precision. */
    public Answer answer(Prefill prefill, dev.calibquant.quant.QuantConfig quant) {
        return answer(prefill, quant, new int[0]);
    }

    /**
     * Greedy answer after feeding {@code fedFirst} (the rest of the prompt, say) through decode steps over the cache
     * filled from {@code prefill}: the answer starts from the logits of the last token fed, or of the prefill when
     * none is. The answer's decode steps and time include those of the tokens fed.
     */
    public Answer answer(Prefill prefill, dev.calibquant.quant.QuantConfig quant, int[] fedFirst) {
        return answerPerLayer(prefill, everyLayer(quant), fedFirst);
    }

    /**
     * {@link #answer(Prefill, dev.calibquant.quant.QuantConfig, int[])} with one config per layer ({@code quant}
     * null keeps the visual span in full precision). The layers must agree on calibration: one decode attention
     * serves them all.
     */
    public Answer answerPerLayer(Prefill prefill, List<dev.calibquant.quant.QuantConfig> quant, int[] fedFirst) {
        Objects.requireNonNull(fedFirst, "fedFirst");
        int vocab = model.config().vocabSize();
        for (int t : fedFirst) {
            if (t < 0 || t >= vocab) {
                throw new IllegalArgumentException("token " + t + " to feed is outside the vocabulary of " + vocab);
            }
        }
        DecodeAttention decode = attentionFor(quant);
        int[] tokens = new int[maxTokens];
        int count = 0;
        int steps = 0;
        long nanos = 0;
        try (Sequence sequence = open(prefill, quant)) {
            int position = prefill.tokens();
            int next = Ops.argmax(prefill.lastLogits());
            int fed = 0;
            while (true) {
                int input;
                if (fed < fedFirst.length) { // the tokens to feed first, then the answer's own
                    input = fedFirst[fed++];
                } else {
                    tokens[count++] = next;
                    if (next == Vocabulary.EOS || count == maxTokens) {
                        break;
                    }
                    input = next;
                }
                // the steps alone: filling and quantizing the cache (open) is the end of prefill, not decoding
                long started = System.nanoTime();
                next = Ops.argmax(model.step(input, position++, sequence, cache.dtype(), decode));
                nanos += System.nanoTime() - started;
                steps++;
            }
            return new Answer(Arrays.copyOf(tokens, count), kvBytes(prefill.tokens() + steps, quant),
                    steps, nanos);
        }
    }

    /** Teacher forcing: the logits after each of {@code forced} fed as decode steps (for tests). */
    float[][] forcedLogits(Prefill prefill, dev.calibquant.quant.QuantConfig one, int[] forced) {
        List<dev.calibquant.quant.QuantConfig> quant = everyLayer(one);
        DecodeAttention decode = attentionFor(quant);
        float[][] logits = new float[forced.length][];
        try (Sequence sequence = open(prefill, quant)) {
            for (int i = 0; i < forced.length; i++) {
                logits[i] = model.step(forced[i], prefill.tokens() + i, sequence, cache.dtype(), decode);
            }
        }
        return logits;
    }

    /** {@code quant} in every layer, or null. */
    private List<dev.calibquant.quant.QuantConfig> everyLayer(dev.calibquant.quant.QuantConfig quant) {
        return quant == null ? null : java.util.Collections.nCopies(cache.geometry().layers(), quant);
    }

    private DecodeAttention attentionFor(List<dev.calibquant.quant.QuantConfig> quant) {
        if (quant != null && quant.stream().map(dev.calibquant.quant.QuantConfig::calibration).distinct().count() > 1) {
            throw new IllegalArgumentException("the layers' configs calibrate differently; one decode attention "
                    + "serves every layer");
        }
        return attentions.computeIfAbsent(quant == null ? Calibration.OFF : quant.getFirst().calibration(),
                attention::create);
    }

    /** A sequence of the cache holding the prompt's keys and values, visual span quantized when {@code quant} is set. */
    Sequence open(Prefill prefill, List<dev.calibquant.quant.QuantConfig> quant) {
        ModelGeometry g = cache.geometry();
        DType dtype = cache.dtype();
        TokenSpan span = model.visualSpan();
        Sequence sequence = quant == null ? cache.createSequence(prefill.tokens())
                : cache.createSequencePerLayer(prefill.tokens(), List.of(span), quant, 0);
        try (Arena arena = Arena.ofConfined()) {
            long elements = (long) g.kvHeads() * prefill.tokens() * g.headDim();
            MemorySegment keys = arena.allocate(elements * dtype.byteSize());
            MemorySegment values = arena.allocate(elements * dtype.byteSize());
            for (int l = 0; l < g.layers(); l++) {
                float[] k = prefill.keys()[l];
                float[] v = prefill.values()[l];
                for (int i = 0; i < elements; i++) {
                    Elements.write(keys, dtype, i, k[i]);
                    Elements.write(values, dtype, i, v[i]);
                }
                sequence.fill(l, keys, values, dtype);
            }
        } catch (RuntimeException | Error e) {
            sequence.close();
            throw e;
        }
        return sequence;
    }

    private long kvBytes(int tokens, List<dev.calibquant.quant.QuantConfig> quant) {
        ModelGeometry g = cache.geometry();
        int visual = quant == null ? 0 : model.visualSpan().length();
        long bytes = 2L * g.kvHeads() * g.headDim() * cache.dtype().byteSize() * (tokens - visual) * g.layers();
        if (quant != null) {
            for (dev.calibquant.quant.QuantConfig layer : quant) {
                bytes += ChannelQuantizer.bytesFor(layer, g.kvHeads(), visual, g.headDim());
            }
        }
        return bytes;
    }
}
