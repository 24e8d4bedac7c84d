package dev.calibquant.model;

import dev.calibquant.quant.ClipAnchor;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.QuantConfig;
import java.util.List;

/**
 * How a run keeps its visual keys and values: {@code quant} null keeps them in the cache's 16-bit dtype, otherwise
 * they are quantized with it at the end of prefill.
 */
public record KvSetting(String name, QuantConfig quant) {

    public static final KvSetting FP16 = new KvSetting("fp16", null);

    /** The rows of the accuracy table. */
    public static List<KvSetting> accuracyTable() {
        QuantConfig one = QuantConfig.defaults(1);
        return List.of(FP16,
                new KvSetting("1-bit CalibQuant", one),
                new KvSetting("1-bit, no calibration", one.withCalibrate(false)),
                new KvSetting("1-bit, no clipping (factor 1)", one.withKeyClip(1f).withValueClip(1f)),
                new KvSetting("1-bit, per-token values", one.withValueGranularity(Granularity.PER_TOKEN)),
                new KvSetting("1-bit, clipped about the midpoint (0.7), no calibration", one.withKeyClip(0.7f)
                        .withValueClip(0.7f).withClipAnchor(ClipAnchor.MIDPOINT).withCalibrate(false)),
                new KvSetting("1-bit, clipped about the midpoint (0.8), calibrated", one.withKeyClip(0.8f)
                        .withValueClip(0.8f).withClipAnchor(ClipAnchor.MIDPOINT)),
                new KvSetting("2-bit CalibQuant", QuantConfig.defaults(2)),
                new KvSetting("2-bit, no calibration", QuantConfig.defaults(2).withCalibrate(false)),
                new KvSetting("2-bit keys (full range), 1-bit values about the midpoint (0.7), no calibration",
                        QuantConfig.defaults(2).withValueBits(1).withKeyClip(1f).withValueClip(0.7f)
                                .withClipAnchor(ClipAnchor.MIDPOINT).withCalibrate(false)),
                new KvSetting("4-bit", QuantConfig.defaults(4)));
    }

    /** "1-bit, keys clipped to 0.5, values to 0.3, calibrated": what the config does, in words. */
    public String describe() {
        if (quant == null) {
            return "visual KV in fp16";
        }
        String width = quant.valueBits() == quant.bits() ? quant.bits() + "-bit visual KV"
                : "visual keys at " + quant.bits() + " bits and values at " + quant.valueBits();
        return width + ", keys clipped to " + quant.keyClip() + ", values to " + quant.valueClip()
                + (quant.clipAnchor() == ClipAnchor.MIDPOINT ? " about each channel's midpoint" : "")
                + (quant.valueGranularity() == Granularity.PER_TOKEN ? " (values per token)" : "")
                + (quant.calibrate() ? ", calibrated (τ " + quant.tauMin() + ", " + quant.tauMax() + ")"
                        : ", not calibrated");
    }
}
