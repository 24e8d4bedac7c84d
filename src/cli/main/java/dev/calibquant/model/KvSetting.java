package dev.calibquant.model;

import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.quant.ClipAnchor;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.QuantConfig;
import java.util.List;

/**
 * How a run keeps its visual keys and values: {@code quant} and {@code layers} null keep them in the cache's 16-bit
 * dtype; otherwise they are quantized at the end of prefill with {@code quant} in every layer, or with
 * {@code layers.get(l)} in layer {@code l}.
 */
public record KvSetting(String name, QuantConfig quant, List<QuantConfig> layers) {

    public static final KvSetting FP16 = new KvSetting("fp16", null);

    public KvSetting {
        if (quant != null && layers != null) {
            throw new IllegalArgumentException("a setting quantizes every layer alike or each its own way, not both");
        }
        layers = layers == null ? null : List.copyOf(layers);
    }

    /** One config for every layer ({@code quant} null: fp16). */
    public KvSetting(String name, QuantConfig quant) {
        this(name, quant, null);
    }

    /** The config of each of {@code layerCount} layers, or null for fp16. */
    public List<QuantConfig> layerQuant(int layerCount) {
        if (layers != null) {
            if (layers.size() != layerCount) {
                throw new IllegalArgumentException("the setting '" + name + "' has " + layers.size()
                        + " layer configs, the model " + layerCount + " layers");
            }
            return layers;
        }
        return quant == null ? null : java.util.Collections.nCopies(layerCount, quant);
    }

    /**
     * 1 bit about the midpoint (0.7) with fp16 offsets and scales, uncalibrated, and key channels at 2 bits where the
     * built-in model's attention needs them: 11/16 of each head's channels in the second-to-last layer, all of them in
     * the last (issue 15: found by tools/model/screen_allocation.py on held-out images; ≥ 6.5× fewer KV bytes).
     */
    public static KvSetting lastLayersWideKeys(ModelGeometry g) {
        QuantConfig base = QuantConfig.defaults(1).withKeyClip(0.7f).withValueClip(0.7f)
                .withClipAnchor(ClipAnchor.MIDPOINT).withCalibrate(false).withParamType(DType.FP16);
        java.util.ArrayList<QuantConfig> layers = new java.util.ArrayList<>();
        for (int l = 0; l < g.layers(); l++) {
            // 11/16 of the channels (88 of 128) is the most that stays >= 6.5x on the built-in model (3/4: 6.496x)
            int wide = l == g.layers() - 1 ? g.headDim() : l == g.layers() - 2 ? g.headDim() * 11 / 16 / 8 * 8 : 0;
            layers.add(base.withWideKeyChannels(wide));
        }
        return new KvSetting("1-bit, 2-bit key channels in the last two layers", null, layers);
    }

    /** The rows of the accuracy table, for a model of geometry {@code g}. */
    public static List<KvSetting> accuracyTable(ModelGeometry g) {
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
                lastLayersWideKeys(g),
                new KvSetting("4-bit", QuantConfig.defaults(4)));
    }

    /** "1-bit, keys clipped to 0.5, values to 0.3, calibrated": what the config does, in words. */
    public String describe() {
        if (layers != null) {
            StringBuilder b = new StringBuilder(describe(layers.getFirst()));
            for (int l = 0; l < layers.size(); l++) {
                int wide = layers.get(l).wideKeyChannels();
                if (wide > 0) {
                    b.append("; layer ").append(l).append(": ").append(wide).append(" key channels per head at 2 bits");
                }
            }
            return b.toString();
        }
        if (quant == null) {
            return "visual KV in fp16";
        }
        return describe(quant);
    }

    private static String describe(QuantConfig quant) {
        String width = quant.valueBits() == quant.bits() ? quant.bits() + "-bit visual KV"
                : "visual keys at " + quant.bits() + " bits and values at " + quant.valueBits();
        return width + ", keys clipped to " + quant.keyClip() + ", values to " + quant.valueClip()
                + (quant.clipAnchor() == ClipAnchor.MIDPOINT ? " about each channel's midpoint" : "")
                + (quant.valueGranularity() == Granularity.PER_TOKEN ? " (values per token)" : "")
                + (quant.paramType() == DType.FP16 ? ", offsets and scales in fp16" : "")
                + (quant.calibrate() ? ", calibrated (τ " + quant.tauMin() + ", " + quant.tauMax() + ")"
                        : ", not calibrated");
    }
}
