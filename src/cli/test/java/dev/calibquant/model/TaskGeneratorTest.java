package dev.calibquant.model;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class TaskGeneratorTest {

    /** The published SplitMix64 sequence seeded with 0 (the reference implementation's first three outputs). */
    @Test
    void splitMixMatchesTheReferenceSequence() {
        assertThat(SplitMix64.sampleState(0, 0)).isEqualTo(0xE220A8397B1DCDAFL);
        assertThat(SplitMix64.sampleState(0, 1)).isEqualTo(0x6E789E6AA1B965F4L);
        assertThat(SplitMix64.sampleState(0, 2)).isEqualTo(0x06C45D188009454FL);
        assertThat(SplitMix64.draw(0, 0)).isEqualTo(0xE220A8397B1DCDAFL);
    }

    @Test
    void belowUsesTheTop32Bits() {
        assertThat(SplitMix64.below(0x0000_0000_FFFF_FFFFL, 5)).isZero();
        assertThat(SplitMix64.below(0xFFFF_FFFF_0000_0000L, 5)).isEqualTo(4);
        assertThat(SplitMix64.below(0x8000_0000_0000_0000L, 16)).isEqualTo(8);
        assertThat(SplitMix64.below(0x5555_5555_0000_0000L, 3)).isEqualTo(0); // 0x55555555·3 = 0xFFFFFFFF < 2^32
        assertThat(SplitMix64.below(0x5555_5556_0000_0000L, 3)).isEqualTo(1);
        assertThatThrownBy(() -> SplitMix64.below(1, 0)).isInstanceOf(IllegalArgumentException.class);
    }

    /**
     * The digest of the first 50 test samples as printed by {@code tools/model/scenes.py} (NumPy, vectorised):
     * the Python generator that trains the model and this one make the same images, questions and answers.
     */
    @Test
    void digestMatchesThePythonGenerator() {
        assertThat(new TaskGenerator(TaskGenerator.TEST_SEED).digest(50)).isEqualTo(-9084263226765729123L);
    }

    @Test
    void firstTestSamplesAreStable() {
        TaskGenerator g = new TaskGenerator(TaskGenerator.TEST_SEED);
        assertThat(g.sample(0).questionText()).isEqualTo("where is the purple circle ?");
        assertThat(g.sample(0).answerText()).isEqualTo("row 0 column 3");
        assertThat(g.sample(1).questionText()).isEqualTo("what is at row 3 column 3 ?");
        assertThat(g.sample(1).answerText()).isEqualTo("large blue square");
        assertThat(g.sample(5).answerText()).isEqualTo("2");
    }

    @Test
    void sameIndexSameSampleAndSeedsDiffer() {
        TaskGenerator a = new TaskGenerator(7);
        TaskGenerator b = new TaskGenerator(7);
        for (int i = 0; i < 20; i++) {
            assertThat(a.sample(i).image()).isEqualTo(b.sample(i).image());
            assertThat(a.sample(i).answer()).isEqualTo(b.sample(i).answer());
        }
        assertThat(new TaskGenerator(7).digest(20)).isNotEqualTo(new TaskGenerator(8).digest(20));
        assertThatThrownBy(() -> a.sample(-1)).isInstanceOf(IllegalArgumentException.class);
    }

    /**
     * Reads each scene back from its pixels alone (the color in each cell, and the shape and size from the covered
     * pixel count: the renderer's rules give circle 37 / 137, square 49 / 169, triangle 25 / 85 pixels for r = 3 / 6,
     * counted row by row in {@link #pixelCountsOfTheShapes}),
     * recomputes the answer from that reading, and checks it is the generator's.
     */
    @Test
    void answersFollowFromThePixels() {
        TaskGenerator g = new TaskGenerator(12345);
        Map<QuestionType, Integer> seen = new HashMap<>();
        for (int i = 0; i < 400; i++) {
            TaskSample s = g.sample(i);
            List<SceneObject> read = readScene(s.image());
            assertThat(read).as("sample %d objects", i).hasSize(s.objects().size());
            assertThat(s.answerText()).as("sample %d: %s", i, s.questionText()).isEqualTo(answer(read,
                    s.question()));
            assertThat(s.answer()[s.answer().length - 1]).isEqualTo(Vocabulary.EOS);
            seen.merge(s.type(), 1, Integer::sum);
        }
        assertThat(seen).hasSize(QuestionType.values().length);
    }

    /**
     * Row by row (dy = −r..r): circle r = 3 has half-widths 1,2,3,3,3,2,1 → 37, r = 6: 2,4,5,5,6,6,6,6,6,5,5,4,2 → 137;
     * square (2r+1)² → 49, 169; triangle half-width ⌊(dy+r)/2⌋: r = 3 → 1+1+3+3+5+5+7 = 25, r = 6 → 85.
     */
    @Test
    void pixelCountsOfTheShapes() {
        int[][] expected = {{37, 137}, {49, 169}, {25, 85}};
        for (int shape = 0; shape < 3; shape++) {
            for (int size = 0; size < 2; size++) {
                int r = size == 0 ? 3 : 6;
                int count = 0;
                for (int dy = -r; dy <= r; dy++) {
                    for (int dx = -r; dx <= r; dx++) {
                        count += SceneRenderer.covers(shape, dx, dy, r) ? 1 : 0;
                    }
                }
                assertThat(count).as("shape %d size %d", shape, size).isEqualTo(expected[shape][size]);
            }
        }
    }

    private static final int[][] AREA = {{37, 137}, {49, 169}, {25, 85}};

    /** Objects found in the image: per cell, the non-background color and how many pixels it covers. */
    static List<SceneObject> readScene(byte[] rgb) {
        List<SceneObject> objects = new ArrayList<>();
        for (int cell = 0; cell < 16; cell++) {
            int count = 0;
            int color = -1;
            for (int y = 16 * (cell / 4); y < 16 * (cell / 4) + 16; y++) {
                for (int x = 16 * (cell % 4); x < 16 * (cell % 4) + 16; x++) {
                    int p = (y * 64 + x) * 3;
                    int r = rgb[p] & 0xFF;
                    int gr = rgb[p + 1] & 0xFF;
                    int b = rgb[p + 2] & 0xFF;
                    if (r == 20 && gr == 20 && b == 20) {
                        continue;
                    }
                    int c = paletteIndex(r, gr, b);
                    assertThat(color == -1 || color == c).as("one color per cell").isTrue();
                    color = c;
                    count++;
                }
            }
            if (count > 0) {
                objects.add(fromArea(cell, color, count));
            }
        }
        return objects;
    }

    private static int paletteIndex(int r, int g, int b) {
        for (int i = 0; i < SceneRenderer.PALETTE.length; i++) {
            int[] c = SceneRenderer.PALETTE[i];
            if (c[0] == r && c[1] == g && c[2] == b) {
                return i;
            }
        }
        throw new AssertionError("pixel (" + r + ", " + g + ", " + b + ") is neither background nor a palette color");
    }

    private static SceneObject fromArea(int cell, int color, int area) {
        for (int shape = 0; shape < 3; shape++) {
            for (int size = 0; size < 2; size++) {
                if (AREA[shape][size] == area) {
                    return new SceneObject(cell, color, shape, size, 0, 0);
                }
            }
        }
        throw new AssertionError("cell " + cell + " covers " + area + " pixels, which no shape does");
    }

    /** The answer by the task's rules, from the question's words. */
    private static String answer(List<SceneObject> objects, int[] question) {
        String[] q = Vocabulary.text(question).split(" ");
        if (q[0].equals("what") && q[2].equals("at")) {
            int cell = Integer.parseInt(q[4]) * 4 + Integer.parseInt(q[6]);
            return objects.stream().filter(o -> o.cell() == cell).map(SceneObject::describe).findFirst()
                    .orElse("nothing");
        }
        if (q[0].equals("where")) {
            SceneObject o = objects.stream().filter(x -> x.describe().endsWith(q[3] + " " + q[4])).findFirst()
                    .orElseThrow();
            return "row " + o.row() + " column " + o.column();
        }
        if (q[0].equals("how") && q[3].equals("shapes")) {
            return Long.toString(objects.stream().filter(o -> o.describe().contains(" " + q[2] + " ")).count());
        }
        if (q[0].equals("how")) {
            String shape = q[2].substring(0, q[2].length() - 1);
            return Long.toString(objects.stream().filter(o -> o.describe().endsWith(shape)).count());
        }
        int row = Integer.parseInt(q[4]);
        List<String> parts = objects.stream().filter(o -> o.row() == row).map(SceneObject::describe).toList();
        return parts.isEmpty() ? "nothing" : String.join(" and ", parts);
    }
}
