package dev.calibquant.quant;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import org.junit.jupiter.api.Test;

class QuantConfigTest {

    @Test
    void defaultsFollowTheSpecTable() {
        assertThat(QuantConfig.defaults(1)).extracting(QuantConfig::keyClip, QuantConfig::valueClip,
                QuantConfig::calibrate).containsExactly(0.5f, 0.3f, true);
        assertThat(QuantConfig.defaults(2)).extracting(QuantConfig::keyClip, QuantConfig::valueClip,
                QuantConfig::calibrate).containsExactly(1.0f, 1.0f, true);
        for (int bits : new int[] {4, 8}) {
            assertThat(QuantConfig.defaults(bits)).extracting(QuantConfig::keyClip, QuantConfig::valueClip,
                    QuantConfig::calibrate).containsExactly(1.0f, 1.0f, false);
        }
        QuantConfig one = QuantConfig.defaults(1);
        assertThat(one.tauMin()).isZero();
        assertThat(one.tauMax()).isEqualTo(3f);
        assertThat(one.policy()).isEqualTo(CalibrationPolicy.REFERENCE);
        assertThat(one.keyGranularity()).isEqualTo(Granularity.PER_CHANNEL);
        assertThat(one.valueGranularity()).isEqualTo(Granularity.PER_CHANNEL);
        assertThat(one.levels()).isEqualTo(1);
        assertThat(QuantConfig.defaults(8).levels()).isEqualTo(255);
        assertThat(one.calibration()).isEqualTo(new Calibration(0f, 3f, CalibrationPolicy.REFERENCE));
        assertThat(QuantConfig.defaults(4).calibration()).isEqualTo(Calibration.OFF);
    }

    @Test
    void withersChangeOneOptionEach() {
        QuantConfig c = QuantConfig.defaults(1).withKeyClip(0.7f).withValueClip(0.2f).withCalibrate(false)
                .withTaus(1f, 2f).withPolicy(CalibrationPolicy.CLAMP_AT_ZERO)
                .withKeyGranularity(Granularity.GLOBAL).withValueGranularity(Granularity.PER_TOKEN);
        assertThat(c).isEqualTo(new QuantConfig(1, 0.7f, 0.2f, false, 1f, 2f, CalibrationPolicy.CLAMP_AT_ZERO,
                Granularity.GLOBAL, Granularity.PER_TOKEN));
    }

    @Test
    void rejectsInvalidOptions() {
        QuantConfig d = QuantConfig.defaults(1);
        assertThatThrownBy(() -> QuantConfig.defaults(3)).hasMessageContaining("bits");
        assertThatThrownBy(() -> d.withKeyClip(0f)).hasMessageContaining("keyClip");
        assertThatThrownBy(() -> d.withValueClip(1.5f)).hasMessageContaining("valueClip");
        assertThatThrownBy(() -> d.withKeyClip(Float.NaN)).hasMessageContaining("keyClip");
        assertThatThrownBy(() -> d.withTaus(-1f, 3f)).hasMessageContaining("tauMin");
        assertThatThrownBy(() -> d.withTaus(0f, Float.POSITIVE_INFINITY)).hasMessageContaining("tauMax");
        assertThatThrownBy(() -> d.withPolicy(null)).isInstanceOf(NullPointerException.class);
        for (int bad : new int[] {0, 3, 16, -1}) {
            assertThatThrownBy(() -> d.withValueBits(bad)).isInstanceOf(IllegalArgumentException.class)
                    .hasMessage("valueBits must be 1, 2, 4 or 8, got " + bad);
        }
    }

    @Test
    void valuesHaveTheKeysWidthUnlessSetApart() {
        QuantConfig two = QuantConfig.defaults(2);
        assertThat(two.valueBits()).isEqualTo(2);
        assertThat(two.valueLevels()).isEqualTo(3);
        QuantConfig mixed = two.withValueBits(1).withKeyClip(1f).withCalibrate(false);
        assertThat(mixed.bits()).isEqualTo(2);
        assertThat(mixed.levels()).isEqualTo(3);
        assertThat(mixed.valueBits()).isEqualTo(1);
        assertThat(mixed.valueLevels()).isEqualTo(1);
        assertThat(mixed).isNotEqualTo(mixed.withValueBits(2));
        assertThat(mixed.withClipAnchor(ClipAnchor.MIDPOINT).valueBits()).isEqualTo(1); // every wither keeps it
        // accounting: 2-bit key codes, 1-bit value codes, fp32 scales and offsets per channel
        assertThat(ChannelQuantizer.bytesFor(mixed, 2, 10, 16)).isEqualTo(2 * 10 * (4 + 2) + 8L * (2 * 16 + 2 * 16));
    }
}
