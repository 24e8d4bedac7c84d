package dev.calibquant.model;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.within;

import org.junit.jupiter.api.Test;

/** The paired difference against the first setting, checked against the formula on hand-made outcomes. */
class EvaluationScoreTest {

    private static final int[] TRUTH = {5, 6, 1};
    private static final Answer RIGHT = new Answer(TRUTH.clone(), 100, 2, 10);
    private static final Answer WRONG = new Answer(new int[] {5, 7, 1}, 100, 2, 10);

    @Test
    void thePairedDifferenceIsTheMeanOfPerImageDifferencesWithItsNormalInterval() {
        Evaluation.Score score = new Evaluation.Score(KvSetting.FP16);
        // 10 images: 6 where both agree, 1 where this one is right and the first wrong, 3 the other way round
        boolean[] firstRight = {true, true, true, false, false, false, false, true, true, true};
        boolean[] thisRight = {true, true, true, false, false, false, true, false, false, false};
        for (int i = 0; i < firstRight.length; i++) {
            score.add(thisRight[i] ? RIGHT : WRONG, TRUTH, QuestionType.WHAT_AT, firstRight[i]);
        }
        Evaluation.PairedDifference d = score.differenceFromFirst();
        // d = {0,0,0,0,0,0,+1,-1,-1,-1}: mean -0.2, sample variance (4 - 10·0.04) / 9 = 0.4
        assertThat(d.mean()).isCloseTo(-0.2, within(1e-12));
        assertThat(d.halfWidth95()).isCloseTo(1.959964 * Math.sqrt(0.4 / 10), within(1e-12));
        assertThat(d.samples()).isEqualTo(10);
        assertThat(score.exactMatch()).isCloseTo(0.4, within(1e-12));
    }

    @Test
    void identicalOutcomesDifferByExactlyZeroWithNoWidth() {
        Evaluation.Score score = new Evaluation.Score(KvSetting.FP16);
        for (int i = 0; i < 7; i++) {
            score.add(i % 2 == 0 ? RIGHT : WRONG, TRUTH, QuestionType.WHAT_AT, i % 2 == 0);
        }
        assertThat(score.differenceFromFirst().mean()).isZero();
        assertThat(score.differenceFromFirst().halfWidth95()).isZero();
    }

    @Test
    void fewerThanTwoImagesGiveNoInterval() {
        Evaluation.Score score = new Evaluation.Score(KvSetting.FP16);
        assertThat(score.differenceFromFirst().mean()).isNaN();
        score.add(RIGHT, TRUTH, QuestionType.WHAT_AT, false);
        assertThat(score.differenceFromFirst().mean()).isEqualTo(1.0);
        assertThat(score.differenceFromFirst().halfWidth95()).isNaN();
        assertThat(score.exactMatch(QuestionType.WHERE)).isNaN();
    }
}
