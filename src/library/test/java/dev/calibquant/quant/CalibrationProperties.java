package dev.calibquant.quant;

import static org.assertj.core.api.Assertions.assertThat;

import java.util.Random;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.constraints.FloatRange;
import net.jqwik.api.constraints.IntRange;
import org.junit.jupiter.api.Test;

class CalibrationProperties {
    private static final double U = 0x1p-24;

    /**
     * With δ − γ = R > τmax + τmin the formula is the affine map g(x) = γ + τmin + (x − γ)·f,
     * f = (R − τmax − τmin)/R (up to the 1e−8). Tolerance: the fp32 evaluation
     * ((x − γ)/(R + ε))·w + (γ + τmin) has five roundings, each at most u = 2^−24 relative to an operand no larger
     * than |γ| + τmin + |δ| + τmax + |x − γ|·(1 + |f|), so 8u times that bounds them; the 1e−8 changes f by at most
     * |f|·1e−8/R, i.e. g by |x − γ|·|f|·1e−8/R.
     */
    @Property(tries = 200)
    void isTheAffineContractionInClosedForm(@ForAll long seed, @ForAll @IntRange(min = 2, max = 300) int n,
            @ForAll @FloatRange(min = 0, max = 3) float tauMin, @ForAll @FloatRange(min = 0, max = 3) float tauMax) {
        Random random = new Random(seed);
        float center = (float) (random.nextGaussian() * 10);
        float spread = (float) (tauMin + tauMax + 0.5 + random.nextDouble() * 20);
        float[] s = new float[n + 2];
        for (int i = 0; i < s.length; i++) {
            s[i] = center + (float) (random.nextDouble() * spread);
        }
        s[1] = center;
        s[n] = center + spread;
        float[] g = s.clone();
        new Calibration(tauMin, tauMax, CalibrationPolicy.REFERENCE).applyInPlace(g, 1, n + 1);
        double gamma = Double.POSITIVE_INFINITY;
        double delta = Double.NEGATIVE_INFINITY;
        for (int i = 1; i <= n; i++) {
            gamma = Math.min(gamma, s[i]);
            delta = Math.max(delta, s[i]);
        }
        double range = delta - gamma;
        double f = (range - tauMax - tauMin) / range;
        assertThat(f).isPositive();
        assertThat(g[0]).isEqualTo(s[0]);
        assertThat(g[n + 1]).isEqualTo(s[n + 1]);
        for (int i = 1; i <= n; i++) {
            double x = s[i];
            double expected = gamma + tauMin + (x - gamma) * f;
            double bound = 8 * U * (Math.abs(gamma) + tauMin + Math.abs(delta) + tauMax
                    + Math.abs(x - gamma) * (1 + Math.abs(f))) + Math.abs(x - gamma) * Math.abs(f) * 1e-8 / range;
            assertThat(Math.abs(g[i] - expected)).as("seed %d index %d", seed, i).isLessThanOrEqualTo(bound);
            if (x == delta) {
                assertThat(Math.abs(g[i] - (delta - tauMax))).isLessThanOrEqualTo(bound);
            }
            if (x == gamma) {
                assertThat((double) g[i]).isEqualTo(gamma + tauMin, org.assertj.core.data.Offset.offset(bound));
            }
        }
        // the double-precision variant computes the same function
        double[] d = new double[n + 2];
        for (int i = 0; i < d.length; i++) {
            d[i] = s[i];
        }
        new Calibration(tauMin, tauMax, CalibrationPolicy.REFERENCE).applyInPlace(d, 1, n + 1);
        for (int i = 1; i <= n; i++) {
            double bound = 8 * U * (Math.abs(gamma) + tauMin + Math.abs(delta) + tauMax
                    + Math.abs(s[i] - gamma) * (1 + Math.abs(f))) + Math.abs(s[i] - gamma) * 1e-8 / range;
            assertThat(Math.abs(d[i] - g[i])).isLessThanOrEqualTo(bound);
        }
    }

    @Test
    void narrowRangesInvertUnderTheReferenceAndFlattenUnderTheClamp() {
        // R = 2 < τmax = 3: f = (2 − 3)/2 = −0.5; 2 + 1e−8 rounds to 2 in fp32, so every value is exact
        float[] ref = {0f, 1f, 2f};
        new Calibration(0f, 3f, CalibrationPolicy.REFERENCE).applyInPlace(ref, 0, 3);
        assertThat(ref).containsExactly(0f, -0.5f, -1f);
        float[] clamp = {0f, 1f, 2f};
        new Calibration(0f, 3f, CalibrationPolicy.CLAMP_AT_ZERO).applyInPlace(clamp, 0, 3);
        assertThat(clamp).containsExactly(0f, 0f, 0f);
        float[] clampTau = {5f, 6f, 7f};
        new Calibration(1f, 2f, CalibrationPolicy.CLAMP_AT_ZERO).applyInPlace(clampTau, 0, 3);
        assertThat(clampTau).containsExactly(6f, 6f, 6f);
        // R = τmax + τmin exactly: the factor is 0 under both policies
        for (CalibrationPolicy p : CalibrationPolicy.values()) {
            float[] s = {1f, 2.5f, 4f};
            new Calibration(0f, 3f, p).applyInPlace(s, 0, 3);
            assertThat(s).as("%s", p).containsExactly(1f, 1f, 1f);
        }
        // one score (R = 0): (x − γ) = 0, so g = γ + τmin under both policies
        for (CalibrationPolicy p : CalibrationPolicy.values()) {
            float[] s = {4f};
            new Calibration(0.5f, 3f, p).applyInPlace(s, 0, 1);
            assertThat(s).containsExactly(4.5f);
        }
    }

    @Property(tries = 50)
    void bothPoliciesAgreeWhenTheRangeIsWide(@ForAll long seed) {
        Random random = new Random(seed);
        float[] s = new float[50];
        for (int i = 0; i < s.length; i++) {
            s[i] = (float) (random.nextGaussian() * 4);
        }
        s[0] = -10f;
        s[1] = 10f;
        float[] a = s.clone();
        float[] b = s.clone();
        new Calibration(0f, 3f, CalibrationPolicy.REFERENCE).applyInPlace(a, 0, 50);
        new Calibration(0f, 3f, CalibrationPolicy.CLAMP_AT_ZERO).applyInPlace(b, 0, 50);
        assertThat(a).containsExactly(b);
    }

    @Test
    void offLeavesScoresUnchanged() {
        float[] s = {3f, -1f, 7f};
        Calibration.OFF.applyInPlace(s, 0, 3);
        assertThat(s).containsExactly(3f, -1f, 7f);
    }
}
