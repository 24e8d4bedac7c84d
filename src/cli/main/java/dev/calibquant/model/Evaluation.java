package dev.calibquant.model;

import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.quant.DType;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

/**
 * Answers test samples of the scene task under several {@link KvSetting}s and scores them: one prefill per image
 * (exact attention, shared by every setting, since quantization happens only after it), then one greedy decode per
 * setting through a fresh fp16 cache sequence.
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

        void add(Answer answer, int[] truth) {
            samples++;
            exact += Evaluation.exactMatch(answer.tokens(), truth) ? 1 : 0;
            tokenAccuracy += Evaluation.tokenAccuracy(answer.tokens(), truth);
            kvBytes += answer.kvBytes();
            tokens += answer.tokens().length;
            decodeSteps += answer.decodeSteps();
            decodeNanos += answer.decodeNanos();
        }
    }

    /** One sample and its answer under every setting, in the settings' order. */
    public record Result(TaskSample sample, List<Answer> answers) {
    }

    private final SceneModel model;
    private final List<KvSetting> settings;
    private final List<Score> scores = new ArrayList<>();
    private final AnswerGenerator generator;
    private long prefillNanos;

    public Evaluation(SceneModel model, KvCacheManager cache, DecodeAttentionFactory attention,
            List<KvSetting> settings) {
        this.model = Objects.requireNonNull(model, "model");
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
        Prefill prefill = model.prefill(sample.image(), sample.question());
        prefillNanos += System.nanoTime() - started;
        List<Answer> answers = new ArrayList<>();
        for (int i = 0; i < settings.size(); i++) {
            Answer a = generator.answer(prefill, settings.get(i).quant());
            scores.get(i).add(a, sample.answer());
            answers.add(a);
        }
        return new Result(sample, answers);
    }

    public List<Score> scores() {
        return List.copyOf(scores);
    }

    public long prefillNanos() {
        return prefillNanos;
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
