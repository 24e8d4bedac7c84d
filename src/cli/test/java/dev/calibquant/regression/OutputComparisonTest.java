package dev.calibquant.regression;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.testing.Seeds;
import java.util.Random;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

class OutputComparisonTest {
    private Random random;

    @BeforeEach
    void seed() {
        random = new Random(Seeds.fresh(getClass().getSimpleName()));
    }

    @Test
    void theRecordedRunItselfIsBitIdentical() {
        ObservedOutput o = Fixtures.output("attention", OutputKind.ATTENTION, 1000, 1e-4, random);
        OutputComparison.Verdict v = OutputComparison.compare(Expectations.Output.of(o), o);
        assertThat(v.passed()).isTrue();
        assertThat(v.worstRatio()).isZero();
        assertThat(v.detail()).isEqualTo("bit-identical");
    }

    @Test
    void aSampledElementWithinTheCombinedBoundPassesAndBeyondItFailsThere() {
        ObservedOutput o = Fixtures.output("attention", OutputKind.ATTENTION, 1000, 1e-3, random);
        Expectations.Output rec = Expectations.Output.of(o);
        int i = rec.sampleIndex()[5];
        // attention: the runs' bounds add, 1e-3 + 1e-3 (the stored one rounded up to float)
        OutputComparison.Verdict inside = OutputComparison.compare(rec, Fixtures.moved(o, i, 1.9e-3));
        assertThat(inside.passed()).as(inside.detail()).isTrue();
        assertThat(inside.worstRatio()).isBetween(0.9, 1.0);
        assertThat(inside.where()).isEqualTo("attention[" + i + "]");
        OutputComparison.Verdict beyond = OutputComparison.compare(rec, Fixtures.moved(o, i, 2.2e-3));
        assertThat(beyond.passed()).isFalse();
        assertThat(beyond.where()).isEqualTo("attention[" + i + "]");
        assertThat(beyond.worstRatio()).isBetween(1.05, 1.15);
        assertThat(beyond.detail()).contains("attention[" + i + "]").contains("bound");
    }

    @Test
    void anUnsampledElementIsCaughtByTheSums() {
        ObservedOutput o = Fixtures.output("scales", OutputKind.SCALES, 1000, 1e-6, random);
        Expectations.Output rec = Expectations.Output.of(o);
        int unsampled = rec.sampleIndex()[1] + 1;
        // Σ bounds of both runs: 2·1000·1e-6 = 2e-3 (+ a negligible rounding term)
        OutputComparison.Verdict v = OutputComparison.compare(rec, Fixtures.moved(o, unsampled, 0.01));
        assertThat(v.passed()).isFalse();
        assertThat(v.where()).startsWith("sum of");
        assertThat(OutputComparison.compare(rec, Fixtures.moved(o, unsampled, 1e-3)).passed()).isTrue();
    }

    @Test
    void aBoundOfZeroAdmitsNoDifference() {
        ObservedOutput o = Fixtures.output("appended", OutputKind.EXACT, 50, 0, random);
        Expectations.Output rec = Expectations.Output.of(o);
        OutputComparison.Verdict v = OutputComparison.compare(rec, Fixtures.moved(o, rec.sampleIndex()[3], 1e-3));
        assertThat(v.passed()).isFalse();
        assertThat(v.worstRatio()).isInfinite();
    }

    @Test
    void codesMayDifferByOneOnlyWhereARunMarksARoundingTie() {
        float[] codes = new float[40];
        double[] ties = new double[40];
        for (int i = 0; i < codes.length; i++) {
            codes[i] = random.nextInt(4);
        }
        ties[0] = 1; // element 0 sits at a tie in the recorded run
        Expectations.Output rec = Expectations.Output.of(new ObservedOutput("codes", OutputKind.CODES, codes, ties));
        float[] now = codes.clone();
        now[0] += 1;
        OutputComparison.Verdict flip = OutputComparison.compare(rec,
                new ObservedOutput("codes", OutputKind.CODES, now, new double[40]));
        assertThat(flip.passed()).as(flip.detail()).isTrue();
        assertThat(flip.worstRatio()).isEqualTo(1.0);
        now[0] += 1; // two codes away is never a rounding tie, even with both runs at one: max, not sum
        assertThat(OutputComparison.compare(rec, new ObservedOutput("codes", OutputKind.CODES, now, ties)).passed())
                .isFalse();
        float[] other = codes.clone();
        other[rec.sampleIndex()[2]] += 1; // no tie there
        OutputComparison.Verdict v = OutputComparison.compare(rec,
                new ObservedOutput("codes", OutputKind.CODES, other, new double[40]));
        assertThat(v.passed()).isFalse();
        assertThat(v.where()).isEqualTo("codes[" + rec.sampleIndex()[2] + "]");
    }

    @Test
    void aNonFiniteElementFailsWhereverItIs() {
        ObservedOutput o = Fixtures.output("attention", OutputKind.ATTENTION, 300, 1.0, random);
        Expectations.Output rec = Expectations.Output.of(o);
        for (float bad : new float[] {Float.NaN, Float.POSITIVE_INFINITY}) {
            float[] v = o.values().clone();
            v[123] = bad;
            OutputComparison.Verdict verdict = OutputComparison.compare(rec,
                    new ObservedOutput("attention", OutputKind.ATTENTION, v, o.tolerance()));
            assertThat(verdict.passed()).isFalse();
            assertThat(verdict.where()).isEqualTo("attention[123]");
        }
    }

    @Test
    void aDifferentElementCountFails() {
        ObservedOutput o = Fixtures.output("attention", OutputKind.ATTENTION, 300, 1.0, random);
        ObservedOutput shorter = new ObservedOutput("attention", OutputKind.ATTENTION,
                java.util.Arrays.copyOf(o.values(), 299), java.util.Arrays.copyOf(o.tolerance(), 299));
        OutputComparison.Verdict v = OutputComparison.compare(Expectations.Output.of(o), shorter);
        assertThat(v.passed()).isFalse();
        assertThat(v.detail()).contains("299 elements, recorded 300");
    }

    @Test
    void badObservationsAreRefused() {
        org.assertj.core.api.Assertions.assertThatThrownBy(() -> new ObservedOutput("x", OutputKind.SCALES,
                new float[] {1, 2}, new double[] {0, Double.NaN})).isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("tolerance[1]");
        org.assertj.core.api.Assertions.assertThatThrownBy(() -> new ObservedOutput("x", OutputKind.SCALES,
                new float[] {1, 2}, new double[] {0})).isInstanceOf(IllegalArgumentException.class);
    }
}
