package dev.calibquant.model;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.RandomSeedExtension;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import java.nio.file.Path;
import java.util.Arrays;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.api.io.TempDir;

/** Decoding through the KV cache against prefill of the whole sequence, on random tiny models. */
class DecodeThroughCacheTest {

    @RegisterExtension
    final RandomSeedExtension seed = new RandomSeedExtension();

    @TempDir
    Path dir;

    private SceneModel randomModel() throws Exception {
        return SceneModel.load(new TestWeights(TestWeights.tiny(), seed.seed()).write(dir.resolve("w.safetensors")));
    }

    private static double maxDiff(float[] a, int offset, float[] b) {
        double worst = 0;
        for (int i = 0; i < b.length; i++) {
            worst = Math.max(worst, Math.abs(a[offset + i] - b[i]));
        }
        return worst;
    }

    /**
     * With an fp32 cache and no quantization, decode steps compute the same function as prefill of the whole
     * sequence, only in another order of operations; each differs from exact arithmetic by the fp32 rounding that
     * {@link ForwardPassTest} bounds by 16 × the NumPy fp32 gap of the tiny model, so two of them differ by at most
     * twice that.
     */
    @Test
    void fp32CacheDecodeEqualsPrefill() throws Exception {
        SceneModel model = randomModel();
        double bound = 2 * 16 * ReferenceLogits.read(ForwardPassTest.resource("tiny-random-logits.safetensors"))
                .fp32Gap();
        TaskGenerator task = new TaskGenerator(seed.seed());
        try (KvCacheManager cache = KvCacheManager.onHost(model.config().geometry(), DType.FP32)) {
            AnswerGenerator generator = new AnswerGenerator(model, cache, DecodeAttentionFactory.cpu(), 16);
            for (int n = 0; n < 2; n++) {
                TaskSample sample = task.sample(n);
                int[] prompt = model.prompt(sample.question());
                int[] all = concat(prompt, sample.answer());
                Prefill whole = model.prefillTokens(sample.image(), all);
                Prefill head = model.prefill(sample.image(), sample.question());
                float[][] stepped = generator.forcedLogits(head, null, sample.answer());
                int vocab = model.config().vocabSize();
                assertThat(maxDiff(whole.logits(), (prompt.length - 1) * vocab, head.lastLogits())).isZero();
                for (int i = 0; i < stepped.length; i++) {
                    assertThat(maxDiff(whole.logits(), (prompt.length + i) * vocab, stepped[i]))
                            .as("sample %d step %d", n, i).isLessThanOrEqualTo(bound);
                }
            }
            assertThat(cache.openSequences()).isZero();
        }
    }

    /**
     * The question fed through decode steps after a prefill of the image alone ({@link QuestionTiming#AFTER_IMAGE})
     * computes, with an fp32 cache and no quantization, the same function as prefill of the whole prompt: the same
     * bound as above. The answer starts from the last question token's step, so it reads the cache from its first
     * token on; the steps and the cache's bytes count the question's tokens.
     */
    @Test
    void aQuestionFedAfterTheImageComputesWhatPrefillOfTheWholePromptDoes() throws Exception {
        SceneModel model = randomModel();
        double bound = 2 * 16 * ReferenceLogits.read(ForwardPassTest.resource("tiny-random-logits.safetensors"))
                .fp32Gap();
        TaskGenerator task = new TaskGenerator(seed.seed() + 2);
        int vocab = model.config().vocabSize();
        try (KvCacheManager cache = KvCacheManager.onHost(model.config().geometry(), DType.FP32)) {
            AnswerGenerator generator = new AnswerGenerator(model, cache, DecodeAttentionFactory.cpu(), 16);
            for (int n = 0; n < 2; n++) {
                TaskSample sample = task.sample(n);
                int[] prompt = model.prompt(sample.question());
                int imageEnd = model.visualSpan().end() + 1;
                assertThat(prompt[imageEnd - 1]).isEqualTo(Vocabulary.IMG_END);
                Prefill whole = model.prefillTokens(sample.image(), concat(prompt, sample.answer()));
                Prefill image = model.prefillTokens(sample.image(), Arrays.copyOf(prompt, imageEnd));
                int[] rest = Arrays.copyOfRange(concat(prompt, sample.answer()), imageEnd,
                        prompt.length + sample.answer().length);
                float[][] stepped = generator.forcedLogits(image, null, rest);
                for (int i = 0; i < stepped.length; i++) {
                    assertThat(maxDiff(whole.logits(), (imageEnd + i) * vocab, stepped[i]))
                            .as("sample %d step %d", n, i).isLessThanOrEqualTo(bound);
                }
                int[] question = Arrays.copyOfRange(prompt, imageEnd, prompt.length);
                Answer after = generator.answer(image, null, question);
                Answer with = generator.answer(model.prefill(sample.image(), sample.question()), null);
                assertThat(after.decodeSteps()).isEqualTo(with.decodeSteps() + question.length);
                assertThat(after.kvBytes() - with.kvBytes()).isZero(); // the same tokens end in the cache
                float[] last = stepped[question.length - 1];
                if (margin(last) > 2 * bound) { // a tie within rounding may go either way
                    assertThat(after.tokens()[0]).isEqualTo(Ops.argmax(Arrays.copyOfRange(whole.logits(),
                            (prompt.length - 1) * vocab, prompt.length * vocab)));
                }
            }
            assertThat(cache.openSequences()).isZero();
        }
    }

    @Test
    void aTokenToFeedOutsideTheVocabularyIsRefusedBeforeAnyStep() throws Exception {
        SceneModel model = randomModel();
        TaskSample sample = new TaskGenerator(seed.seed()).sample(0);
        try (KvCacheManager cache = KvCacheManager.onHost(model.config().geometry(), DType.FP32)) {
            AnswerGenerator generator = new AnswerGenerator(model, cache, DecodeAttentionFactory.cpu(), 16);
            Prefill prefill = model.prefill(sample.image(), sample.question());
            int vocab = model.config().vocabSize();
            assertThatThrownBy(() -> generator.answer(prefill, null, new int[] {1, vocab}))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("token " + vocab);
            assertThat(cache.openSequences()).isZero();
            assertThat(cache.usage().totalBytes()).isZero();
        }
    }

    /** Top logit minus the runner-up. */
    private static double margin(float[] logits) {
        float[] sorted = logits.clone();
        Arrays.sort(sorted);
        return sorted[sorted.length - 1] - sorted[sorted.length - 2];
    }

    /**
     * 8-bit codes over each channel's full range (no clipping, no calibration) perturb the visual keys and values by
     * a rounding error of at most half a step, {@code (max − min)/510}; an fp16 cache perturbs every key and value by
     * its own rounding. Both perturbations are small and unstructured, so the logits respond to them linearly with
     * the same gain: the quantized cache moves the logits from the fp32 cache's by at most about
     * {@code (1 + R)} times what fp16 alone moves them, {@code R} being the ratio of the RMS 8-bit error (measured on
     * this prefill's visual keys and values) to the RMS fp16 error (on all of them). The bound allows twice that.
     */
    @Test
    void eightBitWithoutClippingMatchesFp16() throws Exception {
        SceneModel model = randomModel();
        QuantConfig eightBit = QuantConfig.defaults(8).withKeyClip(1f).withValueClip(1f).withCalibrate(false);
        TaskGenerator task = new TaskGenerator(seed.seed() + 1);
        try (KvCacheManager fp16 = KvCacheManager.onHost(model.config().geometry(), DType.FP16);
                KvCacheManager fp32 = KvCacheManager.onHost(model.config().geometry(), DType.FP32)) {
            AnswerGenerator half = new AnswerGenerator(model, fp16, DecodeAttentionFactory.cpu(), 16);
            AnswerGenerator single = new AnswerGenerator(model, fp32, DecodeAttentionFactory.cpu(), 16);
            // Aggregated over every logit of every step: one logit's error swings with the data (a seed once put a
            // single logit at 1.7× its fp16 counterpart's bound), the RMS follows the per-element error ratio.
            double fp16Sq = 0;
            double eightSq = 0;
            double ratio = 0;
            for (int n = 0; n < 2; n++) {
                TaskSample sample = task.sample(n);
                Prefill prefill = model.prefill(sample.image(), sample.question());
                float[][] exact = single.forcedLogits(prefill, null, sample.answer());
                float[][] rounded = half.forcedLogits(prefill, null, sample.answer());
                float[][] quantized = half.forcedLogits(prefill, eightBit, sample.answer());
                ratio = Math.max(ratio, rmsEightBitError(prefill, model) / rmsFp16Error(prefill));
                for (int i = 0; i < exact.length; i++) {
                    assertThat(maxDiff(rounded[i], 0, exact[i])).as("fp16 moves the logits at all").isPositive();
                    for (int j = 0; j < exact[i].length; j++) {
                        fp16Sq += Math.pow(rounded[i][j] - exact[i][j], 2);
                        eightSq += Math.pow(quantized[i][j] - exact[i][j], 2);
                    }
                }
                Answer a = half.answer(prefill, null);
                Answer b = half.answer(prefill, eightBit);
                assertThat(b.kvBytes()).isLessThan(a.kvBytes());
            }
            assertThat(Math.sqrt(eightSq)).as("RMS logit error of 8-bit KV against fp16 KV's (input error ratio %g)", ratio)
                    .isLessThanOrEqualTo(2 * (1 + ratio) * Math.sqrt(fp16Sq));
        }
    }

    private static double rmsFp16Error(Prefill p) {
        double sum = 0;
        long n = 0;
        for (float[][] kinds : new float[][][] {p.keys(), p.values()}) {
            for (float[] layer : kinds) {
                for (float x : layer) {
                    double e = Float.float16ToFloat(Float.floatToFloat16(x)) - x;
                    sum += e * e;
                    n++;
                }
            }
        }
        return Math.sqrt(sum / n);
    }

    /** RMS of {@code x − (min + σ·round((x − min)/σ))}, σ = (max − min)/255, per layer, KV head and channel. */
    private static double rmsEightBitError(Prefill p, SceneModel model) {
        int heads = model.config().kvHeads();
        int dim = model.config().headDim();
        var span = model.visualSpan();
        double sum = 0;
        long n = 0;
        for (float[][] kinds : new float[][][] {p.keys(), p.values()}) {
            for (float[] layer : kinds) {
                for (int h = 0; h < heads; h++) {
                    for (int d = 0; d < dim; d++) {
                        double min = Double.POSITIVE_INFINITY;
                        double max = Double.NEGATIVE_INFINITY;
                        for (int t = span.start(); t < span.end(); t++) {
                            double x = Float.float16ToFloat(Float.floatToFloat16(layer[(h * p.tokens() + t) * dim + d]));
                            min = Math.min(min, x);
                            max = Math.max(max, x);
                        }
                        double step = (max - min) / 255;
                        for (int t = span.start(); t < span.end(); t++) {
                            double x = Float.float16ToFloat(Float.floatToFloat16(layer[(h * p.tokens() + t) * dim + d]));
                            double e = x - (min + step * Math.rint((x - min) / step));
                            sum += e * e;
                            n++;
                        }
                    }
                }
            }
        }
        return Math.sqrt(sum / n);
    }

    static int[] concat(int[] a, int[] b) {
        int[] c = java.util.Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, c, a.length, b.length);
        return c;
    }
}
