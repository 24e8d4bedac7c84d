package dev.calibquant.quant;

import java.util.Objects;

/**
 * Score calibration of one visual span for one query row (spec §4), applied before the joint softmax:
 *
 * <pre>
 *   γ = min s,  δ = max s
 *   g(x) = (x − γ) / (δ − γ + 1e−8) · ((δ − τmax) − (γ + τmin)) + (γ + τmin)
 * </pre>
 *
 * evaluated in exactly that order, as the reference does. Under {@link CalibrationPolicy#CLAMP_AT_ZERO}, a span whose
 * contraction factor {@code ((δ − τmax) − (γ + τmin)) / (δ − γ + 1e−8)} is negative maps every score to
 * {@code γ + τmin}; otherwise both policies compute the same bits.
 *
 * @param enabled whether calibration happens at all ({@link #OFF} leaves scores unchanged)
 */
public record Calibration(boolean enabled, float tauMin, float tauMax, CalibrationPolicy policy) {

    /** The reference's guard against a zero range, in the same place of the formula. */
    public static final float EPSILON = 1e-8f;

    public static final Calibration OFF = new Calibration(false, 0f, 0f, CalibrationPolicy.REFERENCE);

    public Calibration {
        Objects.requireNonNull(policy, "policy");
        if (!(Float.isFinite(tauMin) && tauMin >= 0 && Float.isFinite(tauMax) && tauMax >= 0)) {
            throw new IllegalArgumentException("tauMin and tauMax must be finite and >= 0, got " + tauMin + ", "
                    + tauMax);
        }
    }

    public Calibration(float tauMin, float tauMax, CalibrationPolicy policy) {
        this(true, tauMin, tauMax, policy);
    }

    /** Calibrates {@code scores[from, to)} in place, in fp32. */
    public void applyInPlace(float[] scores, int from, int to) {
        if (!enabled || from >= to) {
            return;
        }
        float gamma = Float.POSITIVE_INFINITY;
        float delta = Float.NEGATIVE_INFINITY;
        for (int i = from; i < to; i++) {
            gamma = Math.min(gamma, scores[i]);
            delta = Math.max(delta, scores[i]);
        }
        float low = gamma + tauMin;
        float width = (delta - tauMax) - low;
        float range = delta - gamma + EPSILON;
        if (policy == CalibrationPolicy.CLAMP_AT_ZERO && width / range < 0) {
            for (int i = from; i < to; i++) {
                scores[i] = low;
            }
            return;
        }
        for (int i = from; i < to; i++) {
            scores[i] = (scores[i] - gamma) / range * width + low;
        }
    }

    /** The same in double precision, for the reference attention (with the constant 1e−8 read as a double). */
    public void applyInPlace(double[] scores, int from, int to) {
        if (!enabled || from >= to) {
            return;
        }
        double gamma = Double.POSITIVE_INFINITY;
        double delta = Double.NEGATIVE_INFINITY;
        for (int i = from; i < to; i++) {
            gamma = Math.min(gamma, scores[i]);
            delta = Math.max(delta, scores[i]);
        }
        double low = gamma + tauMin;
        double width = (delta - tauMax) - low;
        double range = delta - gamma + 1e-8;
        if (policy == CalibrationPolicy.CLAMP_AT_ZERO && width / range < 0) {
            for (int i = from; i < to; i++) {
                scores[i] = low;
            }
            return;
        }
        for (int i = from; i < to; i++) {
            scores[i] = (scores[i] - gamma) / range * width + low;
        }
    }
}
