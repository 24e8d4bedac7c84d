package dev.calibquant.quant;

import static org.assertj.core.api.Assertions.assertThat;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;

/** Clipping about the channel midpoint ({@link ClipAnchor#MIDPOINT}) against its definition in spec §2. */
class ClipAnchorProperties {

    /** Per channel: α = m − c·h, β = m + c·h (m, h the midpoint and half-width), σ = (β − α)/L, exact codes. */
    @Property(tries = 60)
    void theRangeKeepsItsMidpointAndCodesAreExact(@ForAll long seed, @ForAll("bits") int bits,
            @ForAll("clips") float clip) {
        QuantConfig config = QuantConfig.defaults(bits).withKeyClip(clip).withValueClip(clip)
                .withClipAnchor(ClipAnchor.MIDPOINT);
        int kvHeads = 2;
        int tokens = 24;
        int d = 16;
        try (Arena arena = Arena.ofConfined()) {
            ChannelQuantizerProperties.Case c = ChannelQuantizerProperties.quantizeRandom(arena, seed, config,
                    DType.FP16, kvHeads, tokens, d);
            check(c.keys(), c.span().keyOffset(), c.span().keyScale(), c.span().keyCodes(), config, kvHeads, tokens,
                    d, clip);
            check(c.values(), c.span().valueOffset(), c.span().valueScale(), c.span().valueCodes(), config, kvHeads,
                    tokens, d, clip);
        }
    }

    private static void check(float[] x, MemorySegment offsets, MemorySegment scales, MemorySegment codes,
            QuantConfig config, int kvHeads, int tokens, int d, float clip) {
        int levels = config.levels();
        int[] row = new int[d];
        for (int h = 0; h < kvHeads; h++) {
            for (int ch = 0; ch < d; ch++) {
                double min = Double.POSITIVE_INFINITY;
                double max = Double.NEGATIVE_INFINITY;
                for (int n = 0; n < tokens; n++) {
                    min = Math.min(min, x[(h * tokens + n) * d + ch]);
                    max = Math.max(max, x[(h * tokens + n) * d + ch]);
                }
                float alpha = (float) ((min + max) / 2 - clip * ((max - min) / 2));
                float beta = (float) ((min + max) / 2 + clip * ((max - min) / 2));
                assertThat(ChannelQuantizerProperties.param(offsets, h * d + ch)).isEqualTo(alpha);
                assertThat(ChannelQuantizerProperties.param(scales, h * d + ch))
                        .isEqualTo((float) (((double) beta - alpha) / levels));
                for (int n = 0; n < tokens; n++) {
                    BitPacking.unpackRow(codes, ((long) h * tokens + n) * BitPacking.rowBytes(d, config.bits()), d,
                            config.bits(), row);
                    assertThat(row[ch]).isEqualTo(ChannelQuantizerProperties.exactCode(x[(h * tokens + n) * d + ch],
                            alpha, beta, levels));
                }
            }
        }
    }

    /** At c = 1 both anchors keep the full range: the same bytes. */
    @Property(tries = 30)
    void atFullRangeBothAnchorsAgreeBitForBit(@ForAll long seed, @ForAll("bits") int bits) {
        QuantConfig zero = QuantConfig.defaults(bits).withKeyClip(1f).withValueClip(1f);
        try (Arena arena = Arena.ofConfined()) {
            QuantizedSpan a = ChannelQuantizerProperties.quantizeRandom(arena, seed, zero, DType.FP16, 2, 20, 16)
                    .span();
            QuantizedSpan b = ChannelQuantizerProperties.quantizeRandom(arena, seed,
                    zero.withClipAnchor(ClipAnchor.MIDPOINT), DType.FP16, 2, 20, 16).span();
            for (MemorySegment[] pair : new MemorySegment[][] {{a.keyCodes(), b.keyCodes()},
                    {a.valueCodes(), b.valueCodes()}, {a.keyOffset(), b.keyOffset()}, {a.keyScale(), b.keyScale()},
                    {a.valueOffset(), b.valueOffset()}, {a.valueScale(), b.valueScale()}}) {
                assertThat(pair[0].mismatch(pair[1])).isEqualTo(-1);
            }
        }
    }

    @Provide
    Arbitrary<Integer> bits() {
        return Arbitraries.of(1, 2, 4, 8);
    }

    @Provide
    Arbitrary<Float> clips() {
        return Arbitraries.of(0.3f, 0.5f, 0.7f, 0.8f, 1f);
    }
}
