package dev.calibquant.model;

import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.quant.DType;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;

/**
 * Answers test samples of the scene task under several {@link KvSetting}s and scores them: one prefill per image
 * (exact attention, shared by every setting, since quantization happens only after it), then one greedy decode per
 * setting through a fresh fp16 cache sequence. With {@link QuestionTiming#AFTER_IMAGE} the prefill covers the image
 * alone and the question goes through the decode steps too.
 */
public final class Evaluation {

    /** Per setting, the running score. */
    public static final class Score {
        private final KvSetting setting;
        private int samples;
        private int exact;
        private double tokenAccuracy;
        private long kvBytes;
        private long tokens;
        private long decodeSteps;
        private long decodeNanos;
        // paired with the first setting on the same images: d = exact(this) - exact(first), in {-1, 0, 1}
        private long sumDifference;
        private long sumSquaredDifference;
        private final java.util.EnumMap<QuestionType, int[]> byKind = new java.util.EnumMap<>(QuestionType.class);

        Score(KvSetting setting) {
            this.setting = setting;
        }

        public KvSetting setting() {
            return setting;
        }

        public int samples() {
            return samples;
        }

        public double exactMatch() {
            return samples == 0 ? 0 : (double) exact / samples;
        }

        public double tokenAccuracy() {
            return samples == 0 ? 0 : tokenAccuracy / samples;
        }

        /** Mean KV-cache bytes of one sequence (all layers) at the end of its answer. */
        public double kvBytesPerSequence() {
            return samples == 0 ? 0 : (double) kvBytes / samples;
        }

        /** Decode steps per second (each step one token through the cache). */
        public double decodeTokensPerSecond() {
            return decodeNanos == 0 ? 0 : decodeSteps * 1e9 / decodeNanos;
        }

        public long generatedTokens() {
            return tokens;
        }

        /**
         * Exact match minus the first setting's on the same images, with the half width of its 95 % confidence
         * interval (normal approximation of the paired per-image differences): the way to tell two settings apart on
         * one set of images, far tighter than comparing two independent rates.
         */
        public PairedDifference differenceFromFirst() {
            if (samples < 2) {
                return new PairedDifference(samples == 0 ? Double.NaN : sumDifference, Double.NaN, samples);
            }
            double mean = (double) sumDifference / samples;
            double variance = Math.max(0, (sumSquaredDifference - samples * mean * mean) / (samples - 1));
            return new PairedDifference(mean, 1.959964 * Math.sqrt(variance / samples), samples);
        }

        /** Exact match on the images whose question is of {@code kind}; NaN when there were none. */
        public double exactMatch(QuestionType kind) {
            int[] counts = byKind.get(kind);
            return counts == null ? Double.NaN : (double) counts[0] / counts[1];
        }

        /** How many images asked a question of {@code kind}. */
        public int samples(QuestionType kind) {
            int[] counts = byKind.get(kind);
            return counts == null ? 0 : counts[1];
        }

        void add(Answer answer, int[] truth, QuestionType kind, boolean firstRight) {
            boolean right = Evaluation.exactMatch(answer.tokens(), truth);
            int[] counts = byKind.computeIfAbsent(kind, k -> new int[2]);
            counts[0] += right ? 1 : 0;
            counts[1]++;
            int d = (right ? 1 : 0) - (firstRight ? 1 : 0);
            sumDifference += d;
            sumSquaredDifference += (long) d * d;
            samples++;
            exact += right ? 1 : 0;
            tokenAccuracy += Evaluation.tokenAccuracy(answer.tokens(), truth);
            kvBytes += answer.kvBytes();
            tokens += answer.tokens().length;
            decodeSteps += answer.decodeSteps();
            decodeNanos += answer.decodeNanos();
        }
    }

    /** A paired difference of exact match (a share, not points) and its 95 % half width; NaN when undefined. */
    public record PairedDifference(double mean, double halfWidth95, int samples) {
    }

    /** One sample and its answer under every setting, in the settings' order. */
    public record Result(TaskSample sample, List<Answer> answers) {
    }

    private final SceneModel model;
    private final QuestionTiming timing;
    private final List<KvSetting> settings;
    private final List<Score> scores = new ArrayList<>();
    private final AnswerGenerator generator;
    private long prefillNanos;
    private final java.util.EnumMap<QuestionType, Long> truthTokens = new java.util.EnumMap<>(QuestionType.class);

    public Evaluation(SceneModel model, KvCacheManager cache, DecodeAttentionFactory attention,
            List<KvSetting> settings) {
        this(model, cache, attention, settings, QuestionTiming.WITH_IMAGE);
    }

    public Evaluation(SceneModel model, KvCacheManager cache, DecodeAttentionFactory attention,
            List<KvSetting> settings, QuestionTiming timing) {
        this.model = Objects.requireNonNull(model, "model");
        this.timing = Objects.requireNonNull(timing, "timing");
        this.settings = List.copyOf(settings);
        if (this.settings.isEmpty()) {
            throw new IllegalArgumentException("no settings to evaluate");
        }
        if (cache.dtype() != DType.FP16) {
            throw new IllegalArgumentException("the evaluation's cache must store fp16, not " + cache.dtype());
        }
        for (KvSetting s : this.settings) {
            scores.add(new Score(s));
        }
        this.generator = new AnswerGenerator(model, cache, attention, TaskGenerator.MAX_ANSWER_TOKENS);
    }

    /** Prefills the sample once and answers it under every setting. */
    public Result run(TaskSample sample) {
        long started = System.nanoTime();
        int[] prompt = model.prompt(sample.question());
        // the image ends with its closing token, right after the visual span
        int prefilled = timing == QuestionTiming.WITH_IMAGE ? prompt.length : model.visualSpan().end() + 1;
        Prefill prefill = model.prefillTokens(sample.image(), Arrays.copyOf(prompt, prefilled));
        int[] fed = Arrays.copyOfRange(prompt, prefilled, prompt.length);
        prefillNanos += System.nanoTime() - started;
        List<Answer> answers = new ArrayList<>();
        for (int i = 0; i < settings.size(); i++) {
            answers.add(generator.answerPerLayer(prefill, settings.get(i).layerQuant(model.config().layers()), fed));
        }
        boolean firstRight = exactMatch(answers.getFirst().tokens(), sample.answer());
        for (int i = 0; i < settings.size(); i++) {
            scores.get(i).add(answers.get(i), sample.answer(), sample.type(), firstRight);
        }
        truthTokens.merge(sample.type(), (long) sample.answer().length, Long::sum);
        return new Result(sample, answers);
    }

    public List<Score> scores() {
        return List.copyOf(scores);
    }

    public long prefillNanos() {
        return prefillNanos;
    }

    public QuestionTiming timing() {
        return timing;
    }

    /**
     * The share of the true answers' tokens ({@code <eos>} included) of {@code kind} that are produced by a decode
     * step, reading the (quantized) visual cache: with the question prefilled with the image, all but the first, which
     * comes from prefill and is exact in every setting; with the question after the image, all. NaN when no question
     * of that kind was asked.
     */
    public double cacheReadShare(QuestionType kind) {
        long tokens = truthTokens.getOrDefault(kind, 0L);
        long fromPrefill = timing == QuestionTiming.WITH_IMAGE
                ? scores.getFirst().samples(kind) // every setting answered each image once
                : 0;
        return tokens == 0 ? Double.NaN : (double) (tokens - fromPrefill) / tokens;
    }

    /** The whole answer, {@code <eos>} included, is the truth. */
    public static boolean exactMatch(int[] answer, int[] truth) {
        return java.util.Arrays.equals(answer, truth);
    }

    /** Share of the truth's tokens ({@code <eos>} included) that the answer has at the same position. */
    public static double tokenAccuracy(int[] answer, int[] truth) {
        int hits = 0;
        for (int i = 0; i < Math.min(answer.length, truth.length); i++) {
            hits += answer[i] == truth[i] ? 1 : 0;
        }
        return (double) hits / truth.length;
    }
}
