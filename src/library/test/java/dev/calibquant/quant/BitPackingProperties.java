package dev.calibquant.quant;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Random;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.constraints.IntRange;
import org.junit.jupiter.api.Test;

class BitPackingProperties {

    @Property(tries = 200)
    void packThenUnpackIsIdentity(@ForAll long seed, @ForAll("bits") int bits, @ForAll @IntRange(min = 1, max = 40) int bytes) {
        int channels = bytes * 8 / bits;
        Random random = new Random(seed);
        int[] codes = new int[channels];
        for (int i = 0; i < channels; i++) {
            codes[i] = random.nextInt(1 << bits);
        }
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment dst = arena.allocate(bytes + 3);
            dst.fill((byte) 0x5A);
            BitPacking.packRow(codes, channels, bits, dst, 1);
            int[] back = new int[channels];
            BitPacking.unpackRow(dst, 1, channels, bits, back);
            assertThat(back).as("seed %d", seed).containsExactly(codes);
            assertThat(dst.get(ValueLayout.JAVA_BYTE, 0)).isEqualTo((byte) 0x5A);
            assertThat(dst.get(ValueLayout.JAVA_BYTE, bytes + 1)).isEqualTo((byte) 0x5A);
        }
    }

    @net.jqwik.api.Provide
    net.jqwik.api.Arbitrary<Integer> bits() {
        return net.jqwik.api.Arbitraries.of(1, 2, 4, 8);
    }

    @Test
    void mostSignificantBitsFirst() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment dst = arena.allocate(2);
            // channel 0 in bit 7: channels 0 and 6 set -> 1000_0010
            BitPacking.packRow(new int[] {1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 16, 1, dst, 0);
            assertThat(dst.get(ValueLayout.JAVA_BYTE, 0) & 0xFF).isEqualTo(0b1000_0010);
            assertThat(dst.get(ValueLayout.JAVA_BYTE, 1) & 0xFF).isEqualTo(0b0000_0001);
            BitPacking.packRow(new int[] {3, 0, 1, 2}, 4, 2, dst, 0);
            assertThat(dst.get(ValueLayout.JAVA_BYTE, 0) & 0xFF).isEqualTo(0b11_00_01_10);
            BitPacking.packRow(new int[] {0xA, 0x5}, 2, 4, dst, 0);
            assertThat(dst.get(ValueLayout.JAVA_BYTE, 0) & 0xFF).isEqualTo(0xA5);
        }
    }

    @Test
    void rejectsCodesThatDoNotFitAndRowsThatDoNotFillBytes() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment dst = arena.allocate(1);
            assertThatThrownBy(() -> BitPacking.packRow(new int[] {0, 2, 0, 0, 0, 0, 0, 0}, 8, 1, dst, 0))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("does not fit");
            assertThatThrownBy(() -> BitPacking.rowBytes(12, 1)).isInstanceOf(InvalidShapeException.class);
            assertThatThrownBy(() -> BitPacking.rowBytes(8, 3)).isInstanceOf(InvalidShapeException.class);
        }
    }
}
