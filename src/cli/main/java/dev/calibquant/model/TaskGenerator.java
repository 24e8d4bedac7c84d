package dev.calibquant.model;

import java.util.ArrayList;
import java.util.List;

/**
 * The scene task, sample by sample: sample {@code i} of seed {@code s} is always the same scene, question and
 * answer, here and in {@code tools/model/scenes.py} (which trains the model on seed {@link #TRAIN_SEED}).
 *
 * <p>Each sample takes exactly {@link #DRAWS} draws of its {@link SplitMix64} stream, used or not:
 * <pre>
 *   d0        objects n = 1 + below(d0, 5)
 *   d1..d5    cells: partial Fisher–Yates over 0..15, j = 0..4: swap(cell[j], cell[j + below(d[1+j], 16 − j)])
 *   d6..d10   looks: the same over the 18 (color, shape) pairs 3·color + shape, so no look repeats
 *   d11..d15  size_j = below(d, 2)     d16..d20  jitterX_j = below(d, 3) − 1     d21..d25  jitterY_j likewise
 *   d26       question type = below(d26, 5)
 *   d27       a = below(d27, 2): 0 asks about a present object (slot t), 1 about a uniform cell, color or shape
 *   d28       t = below(d28, n)     d29  cell = below(d29, 16)     d30  color = below(d30, 6)
 *   d31       shape = below(d31, 3)
 * </pre>
 * Objects are slots 0..n−1.
 */
public final class TaskGenerator {
    public static final int DRAWS = 32;
    public static final int MAX_OBJECTS = 5;
    /** The longest answer, {@code <eos>} included: four objects of a row, three "and"s. */
    public static final int MAX_ANSWER_TOKENS = 16;
    public static final long TRAIN_SEED = 1;
    /** The demo's and the accuracy table's test set; the training script never draws from it. */
    public static final long TEST_SEED = 2502;

    private final long seed;

    public TaskGenerator(long seed) {
        this.seed = seed;
    }

    public long seed() {
        return seed;
    }

    public TaskSample sample(long index) {
        if (index < 0) {
            throw new IllegalArgumentException("sample index must be >= 0, got " + index);
        }
        long state = SplitMix64.sampleState(seed, index);
        long[] d = new long[DRAWS];
        for (int k = 0; k < DRAWS; k++) {
            d[k] = SplitMix64.draw(state, k);
        }
        int n = 1 + SplitMix64.below(d[0], MAX_OBJECTS);
        int[] cells = partialShuffle(16, d, 1);
        int[] looks = partialShuffle(18, d, 6);
        List<SceneObject> objects = new ArrayList<>();
        for (int j = 0; j < n; j++) {
            objects.add(new SceneObject(cells[j], looks[j] / 3, looks[j] % 3, SplitMix64.below(d[11 + j], 2),
                    SplitMix64.below(d[16 + j], 3) - 1, SplitMix64.below(d[21 + j], 3) - 1));
        }
        QuestionType type = QuestionType.values()[SplitMix64.below(d[26], 5)];
        boolean present = SplitMix64.below(d[27], 2) == 0;
        SceneObject target = objects.get(SplitMix64.below(d[28], n));
        int cell = present ? target.cell() : SplitMix64.below(d[29], 16);
        int color = present ? target.color() : SplitMix64.below(d[30], 6);
        int shape = present ? target.shape() : SplitMix64.below(d[31], 3);
        String question;
        String answer;
        switch (type) {
            case WHAT_AT -> {
                question = "what is at row " + cell / 4 + " column " + cell % 4 + " ?";
                SceneObject there = at(objects, cell);
                answer = there == null ? "nothing" : there.describe();
            }
            case WHERE -> {
                question = "where is the " + colorWord(target.color()) + " " + shapeWord(target.shape()) + " ?";
                answer = "row " + target.row() + " column " + target.column();
            }
            case COUNT_COLOR -> {
                question = "how many " + colorWord(color) + " shapes ?";
                answer = Integer.toString((int) objects.stream().filter(o -> o.color() == color).count());
            }
            case COUNT_SHAPE -> {
                question = "how many " + Vocabulary.word(Vocabulary.PLURAL_0 + shape) + " ?";
                answer = Integer.toString((int) objects.stream().filter(o -> o.shape() == shape).count());
            }
            case LIST_ROW -> {
                int row = cell / 4;
                question = "what is in row " + row + " ?";
                List<String> parts = new ArrayList<>();
                for (int column = 0; column < 4; column++) {
                    SceneObject there = at(objects, row * 4 + column);
                    if (there != null) {
                        parts.add(there.describe());
                    }
                }
                answer = parts.isEmpty() ? "nothing" : String.join(" and ", parts);
            }
            default -> throw new IllegalStateException(type.toString());
        }
        int[] answerWords = Vocabulary.ids(answer);
        int[] answerTokens = java.util.Arrays.copyOf(answerWords, answerWords.length + 1);
        answerTokens[answerWords.length] = Vocabulary.EOS;
        return new TaskSample(index, List.copyOf(objects), type, SceneRenderer.render(objects),
                Vocabulary.ids(question), answerTokens);
    }

    private static int[] partialShuffle(int size, long[] d, int firstDraw) {
        int[] items = new int[size];
        for (int i = 0; i < size; i++) {
            items[i] = i;
        }
        for (int j = 0; j < MAX_OBJECTS; j++) {
            int r = j + SplitMix64.below(d[firstDraw + j], size - j);
            int t = items[j];
            items[j] = items[r];
            items[r] = t;
        }
        return items;
    }

    private static SceneObject at(List<SceneObject> objects, int cell) {
        for (SceneObject o : objects) {
            if (o.cell() == cell) {
                return o;
            }
        }
        return null;
    }

    private static String colorWord(int color) {
        return Vocabulary.word(Vocabulary.COLOR_0 + color);
    }

    private static String shapeWord(int shape) {
        return Vocabulary.word(Vocabulary.SHAPE_0 + shape);
    }

    /**
     * FNV-1a (64 bit) over samples {@code 0..count−1}: per sample its image bytes, its question token ids, 255, its
     * answer token ids, 255. {@code tools/model/train.py --digest} prints the same number from the Python generator.
     */
    public long digest(int count) {
        long h = 0xcbf29ce484222325L;
        for (int i = 0; i < count; i++) {
            TaskSample s = sample(i);
            for (byte b : s.image()) {
                h = fnv(h, b & 0xFF);
            }
            for (int t : s.question()) {
                h = fnv(h, t);
            }
            h = fnv(h, 255);
            for (int t : s.answer()) {
                h = fnv(h, t);
            }
            h = fnv(h, 255);
        }
        return h;
    }

    private static long fnv(long h, int octet) {
        return (h ^ octet) * 0x100000001b3L;
    }
}
