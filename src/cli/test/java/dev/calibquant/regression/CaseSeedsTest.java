package dev.calibquant.regression;

import static org.assertj.core.api.Assertions.assertThat;

import org.junit.jupiter.api.Test;

class CaseSeedsTest {

    @Test
    void seedsAreTheFirstEightBytesOfTheSha256OfNameAndIndex() {
        // computed independently: python3 -c "import hashlib,struct;
        //   print(struct.unpack('>q', hashlib.sha256(b'quantize_pack_b1_d128#0').digest()[:8])[0])"
        assertThat(CaseSeeds.seed("quantize_pack_b1_d128", 0)).isEqualTo(8319300783309242025L);
        assertThat(CaseSeeds.seed("calibquant_decode_b1_d128_mm2", 1)).isEqualTo(-6074562454919689403L);
    }

    @Test
    void everyVariantAndCaseGetsItsOwnSeed() {
        assertThat(CaseSeeds.seed("fp16_decode_d64", 0)).isNotEqualTo(CaseSeeds.seed("fp16_decode_d64", 1))
                .isNotEqualTo(CaseSeeds.seed("fp16_decode_d128", 0));
    }
}
