package dev.calibquant.quant;

/**
 * What calibration does when a span's score range {@code δ − γ} is at most {@code τmax + τmin}, where the published
 * formula's contraction factor becomes zero or negative (spec §4).
 */
public enum CalibrationPolicy {
    /** The published formula as is: the factor may be negative, which inverts the order of the span's scores. */
    REFERENCE,
    /** The factor is clamped at 0: every score of such a span becomes {@code γ + τmin}. */
    CLAMP_AT_ZERO
}
