package dev.calibquant.quant;

import java.util.Objects;

/**
 * How visual keys and values are quantized and how their scores are calibrated (spec §2 and §4).
 *
 * @param bits             code width of the keys (and of the values unless {@code valueBits} differs): 1, 2, 4 or 8
 * @param keyClip          clipping factor {@code c} for keys, in (0, 1]: the range {@code [c·min, c·max]}, or {@code c}
 *                         times the range about its midpoint ({@link ClipAnchor})
 * @param valueClip        clipping factor for values, in (0, 1]
 * @param calibrate        whether decode attention calibrates the span's scores
 * @param tauMin           calibration offset for the bottom score (finite, ≥ 0)
 * @param tauMax           calibration offset for the top score (finite, ≥ 0)
 * @param policy           what calibration does when the span's score range is at most {@code tauMax + tauMin}
 * @param keyGranularity   which key elements share one (scale, offset)
 * @param valueGranularity which value elements share one (scale, offset)
 * @param clipAnchor       what the clipping factors shrink each range toward: zero (the paper) or its midpoint
 * @param valueBits        code width of the values: 1, 2, 4 or 8; {@code bits} unless set apart (e.g. 2-bit keys
 *                         and 1-bit values: keys are what attention is most sensitive to). The GPU kernels take one
 *                         width for both; spans of two widths are quantized and decoded on the CPU.
 * @param paramType        how offsets and scales are stored: {@link DType#FP32} (the paper), or {@link DType#FP16},
 *                         half the bytes, codes then decided on the stored fp16 grid (spec §2)
 * @param wideKeyChannels  per KV head, how many key channels (those of widest range) are coded on 2 bits over their
 *                         full range while the others keep 1 bit: 0 (none) to {@code headDim}, a multiple of 8; only
 *                         with 1-bit, per-channel keys. Stored as a 1-bit plane plus a low-bit plane (spec §3).
 *                         Spans with fp16 parameters or wide key channels are quantized and decoded on the CPU.
 */
public record QuantConfig(
        int bits,
        float keyClip,
        float valueClip,
        boolean calibrate,
        float tauMin,
        float tauMax,
        CalibrationPolicy policy,
        Granularity keyGranularity,
        Granularity valueGranularity,
        ClipAnchor clipAnchor,
        int valueBits,
        DType paramType,
        int wideKeyChannels) {

    public static final float DEFAULT_TAU_MIN = 0f;
    public static final float DEFAULT_TAU_MAX = 3f;

    public QuantConfig {
        requireWidth("bits", bits);
        requireWidth("valueBits", valueBits);
        requireClip("keyClip", keyClip);
        requireClip("valueClip", valueClip);
        requireNonNegativeFinite("tauMin", tauMin);
        requireNonNegativeFinite("tauMax", tauMax);
        Objects.requireNonNull(policy, "policy");
        Objects.requireNonNull(keyGranularity, "keyGranularity");
        Objects.requireNonNull(valueGranularity, "valueGranularity");
        Objects.requireNonNull(clipAnchor, "clipAnchor");
        Objects.requireNonNull(paramType, "paramType");
        if (paramType == DType.BF16) {
            throw new IllegalArgumentException("paramType must be FP32 or FP16, got BF16");
        }
        if (wideKeyChannels < 0 || wideKeyChannels % 8 != 0) {
            throw new IllegalArgumentException("wideKeyChannels must be a multiple of 8 and >= 0, got "
                    + wideKeyChannels);
        }
        if (wideKeyChannels > 0 && (bits != 1 || keyGranularity != Granularity.PER_CHANNEL)) {
            throw new IllegalArgumentException("wideKeyChannels needs 1-bit per-channel keys, got " + bits + "-bit "
                    + keyGranularity);
        }
    }

    /** Two code widths, fp32 parameters, no wide key channels. */
    public QuantConfig(int bits, float keyClip, float valueClip, boolean calibrate, float tauMin, float tauMax,
            CalibrationPolicy policy, Granularity keyGranularity, Granularity valueGranularity, ClipAnchor clipAnchor,
            int valueBits) {
        this(bits, keyClip, valueClip, calibrate, tauMin, tauMax, policy, keyGranularity, valueGranularity, clipAnchor,
                valueBits, DType.FP32, 0);
    }

    /** One code width for keys and values. */
    public QuantConfig(int bits, float keyClip, float valueClip, boolean calibrate, float tauMin, float tauMax,
            CalibrationPolicy policy, Granularity keyGranularity, Granularity valueGranularity, ClipAnchor clipAnchor) {
        this(bits, keyClip, valueClip, calibrate, tauMin, tauMax, policy, keyGranularity, valueGranularity, clipAnchor,
                bits);
    }

    /** A configuration clipping toward zero, as the paper does ({@link ClipAnchor#ZERO}). */
    public QuantConfig(int bits, float keyClip, float valueClip, boolean calibrate, float tauMin, float tauMax,
            CalibrationPolicy policy, Granularity keyGranularity, Granularity valueGranularity) {
        this(bits, keyClip, valueClip, calibrate, tauMin, tauMax, policy, keyGranularity, valueGranularity,
                ClipAnchor.ZERO);
    }

    /** The spec §2 table: 1 bit clips keys to 0.5 and values to 0.3; calibration is on for 1 and 2 bits. */
    public static QuantConfig defaults(int bits) {
        float keyClip = bits == 1 ? 0.5f : 1.0f;
        float valueClip = bits == 1 ? 0.3f : 1.0f;
        boolean calibrate = bits == 1 || bits == 2;
        return new QuantConfig(bits, keyClip, valueClip, calibrate, DEFAULT_TAU_MIN, DEFAULT_TAU_MAX,
                CalibrationPolicy.REFERENCE, Granularity.PER_CHANNEL, Granularity.PER_CHANNEL);
    }

    /** Largest key code, {@code 2^bits − 1}. */
    public int levels() {
        return (1 << bits) - 1;
    }

    /** Largest value code, {@code 2^valueBits − 1}. */
    public int valueLevels() {
        return (1 << valueBits) - 1;
    }

    /** The same configuration with values coded on {@code width} bits (keys keep {@link #bits()}). */
    public QuantConfig withValueBits(int width) {
        return new QuantConfig(bits, keyClip, valueClip, calibrate, tauMin, tauMax, policy, keyGranularity,
                valueGranularity, clipAnchor, width, paramType, wideKeyChannels);
    }

    /** The calibration decode attention applies to this configuration's spans ({@link Calibration#OFF} if off). */
    public Calibration calibration() {
        return calibrate ? new Calibration(tauMin, tauMax, policy) : Calibration.OFF;
    }

    public QuantConfig withKeyClip(float clip) {
        return new QuantConfig(bits, clip, valueClip, calibrate, tauMin, tauMax, policy, keyGranularity,
                valueGranularity, clipAnchor, valueBits, paramType, wideKeyChannels);
    }

    public QuantConfig withValueClip(float clip) {
        return new QuantConfig(bits, keyClip, clip, calibrate, tauMin, tauMax, policy, keyGranularity,
                valueGranularity, clipAnchor, valueBits, paramType, wideKeyChannels);
    }

    public QuantConfig withCalibrate(boolean on) {
        return new QuantConfig(bits, keyClip, valueClip, on, tauMin, tauMax, policy, keyGranularity,
                valueGranularity, clipAnchor, valueBits, paramType, wideKeyChannels);
    }

    public QuantConfig withTaus(float newTauMin, float newTauMax) {
        return new QuantConfig(bits, keyClip, valueClip, calibrate, newTauMin, newTauMax, policy, keyGranularity,
                valueGranularity, clipAnchor, valueBits, paramType, wideKeyChannels);
    }

    public QuantConfig withPolicy(CalibrationPolicy newPolicy) {
        return new QuantConfig(bits, keyClip, valueClip, calibrate, tauMin, tauMax, newPolicy, keyGranularity,
                valueGranularity, clipAnchor, valueBits, paramType, wideKeyChannels);
    }

    public QuantConfig withKeyGranularity(Granularity granularity) {
        return new QuantConfig(bits, keyClip, valueClip, calibrate, tauMin, tauMax, policy, granularity,
                valueGranularity, clipAnchor, valueBits, paramType, wideKeyChannels);
    }

    public QuantConfig withValueGranularity(Granularity granularity) {
        return new QuantConfig(bits, keyClip, valueClip, calibrate, tauMin, tauMax, policy, keyGranularity,
                granularity, clipAnchor, valueBits, paramType, wideKeyChannels);
    }

    /** The same configuration with its clipping factors applied about {@code anchor}. */
    public QuantConfig withClipAnchor(ClipAnchor anchor) {
        return new QuantConfig(bits, keyClip, valueClip, calibrate, tauMin, tauMax, policy, keyGranularity,
                valueGranularity, anchor, valueBits, paramType, wideKeyChannels);
    }

    /** The same configuration with offsets and scales stored as {@code type} (FP32 or FP16). */
    public QuantConfig withParamType(DType type) {
        return new QuantConfig(bits, keyClip, valueClip, calibrate, tauMin, tauMax, policy, keyGranularity,
                valueGranularity, clipAnchor, valueBits, type, wideKeyChannels);
    }

    /** The same configuration with {@code channels} key channels per KV head coded on 2 bits (see the field). */
    public QuantConfig withWideKeyChannels(int channels) {
        return new QuantConfig(bits, keyClip, valueClip, calibrate, tauMin, tauMax, policy, keyGranularity,
                valueGranularity, clipAnchor, valueBits, paramType, channels);
    }

    /** Checks the parts of this configuration that depend on the head dimension. */
    public void requireFits(int headDim) {
        if (wideKeyChannels > headDim) {
            throw new IllegalArgumentException("wideKeyChannels " + wideKeyChannels + " exceeds the head dimension "
                    + headDim);
        }
    }

    private static void requireWidth(String name, int value) {
        if (value != 1 && value != 2 && value != 4 && value != 8) {
            throw new IllegalArgumentException(name + " must be 1, 2, 4 or 8, got " + value);
        }
    }

    /** A clip shrinks the range (spec §2), which also keeps the clipped ends finite. */
    private static void requireClip(String name, float value) {
        if (!(value > 0 && value <= 1)) {
            throw new IllegalArgumentException(name + " must be in (0, 1], got " + value);
        }
    }

    private static void requireNonNegativeFinite(String name, float value) {
        if (!(Float.isFinite(value) && value >= 0)) {
            throw new IllegalArgumentException(name + " must be finite and >= 0, got " + value);
        }
    }
}
