package dev.calibquant.quant;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * Packs codes {@code 8 / bits} per byte along the head dimension, most significant bits first (spec §3): with 1 bit,
 * byte {@code j} of a row holds channels {@code 8j..8j+7} and channel {@code 8j} is bit 7. A code's stored value is
 * the code itself (no lookup table).
 */
public final class BitPacking {
    private BitPacking() {
    }

    /** Bytes of one packed row of {@code channels} codes; {@code channels · bits} must be a multiple of 8. */
    public static int rowBytes(int channels, int bits) {
        checkBits(bits);
        if (channels <= 0 || (channels * bits) % 8 != 0) {
            throw new InvalidShapeException("headDim * bits must be a positive multiple of 8, got headDim " + channels
                    + " with " + bits + " bits");
        }
        return channels * bits / 8;
    }

    /** Packs {@code codes[0, channels)} (each in {@code [0, 2^bits)}) into {@code dst} at byte {@code dstOffset}. */
    public static void packRow(int[] codes, int channels, int bits, MemorySegment dst, long dstOffset) {
        int bytes = rowBytes(channels, bits);
        int perByte = 8 / bits;
        int mask = (1 << bits) - 1;
        for (int j = 0; j < bytes; j++) {
            int packed = 0;
            for (int i = 0; i < perByte; i++) {
                int code = codes[j * perByte + i];
                if ((code & ~mask) != 0) {
                    throw new IllegalArgumentException("code " + code + " does not fit in " + bits + " bits");
                }
                packed = (packed << bits) | code;
            }
            dst.set(ValueLayout.JAVA_BYTE, dstOffset + j, (byte) packed);
        }
    }

    /** Unpacks one row of {@code channels} codes from {@code src} at byte {@code srcOffset} into {@code codes}. */
    public static void unpackRow(MemorySegment src, long srcOffset, int channels, int bits, int[] codes) {
        int bytes = rowBytes(channels, bits);
        int perByte = 8 / bits;
        for (int j = 0; j < bytes; j++) {
            int packed = src.get(ValueLayout.JAVA_BYTE, srcOffset + j) & 0xFF;
            for (int i = 0; i < perByte; i++) {
                codes[j * perByte + i] = codeInByte(packed, i, bits);
            }
        }
    }

    /** The code at position {@code i} (0 = most significant) of a packed byte. */
    public static int codeInByte(int packedByte, int i, int bits) {
        return (packedByte >>> (8 - bits * (i + 1))) & ((1 << bits) - 1);
    }

    static void checkBits(int bits) {
        if (bits != 1 && bits != 2 && bits != 4 && bits != 8) {
            throw new InvalidShapeException("bits must be 1, 2, 4 or 8, got " + bits);
        }
    }
}
