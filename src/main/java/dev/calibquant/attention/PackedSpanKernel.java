package dev.calibquant.attention;

import dev.calibquant.quant.Elements;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * Scores and value sums of one quantized span for the query heads of one KV head, by post-scaling (spec §4): the
 * rebuilt keys and values {@code α + σ·code} are never formed.
 *
 * <p>Scores: {@code s[n] = (Σ_d (q_d σ_d)·code[n,d] + Σ_d q_d α_d)/√D} (per-channel/global parameters) or
 * {@code (σ_n·Σ_d q_d·code[n,d] + α_n·Σ_d q_d)/√D} (per-token). For codes of 4 bits or fewer the first sum is read
 * from tables: one per packed byte position {@code j}, holding for each of the 256 byte values the partial sum of
 * {@code w_d·code_d} over the byte's channels; a token then costs one lookup per byte (16 for 1 bit, D = 128).
 *
 * <p>Values: {@code Σ_n p_n·V̂[n,d] = σ_d·Σ_n p_n·code[n,d] + α_d·Σ_n p_n} (per-token: weights {@code p_n σ_n} and
 * offset term {@code Σ_n p_n α_n}). For 4 bits or fewer, each token adds its weight to one histogram bin per packed
 * byte ({@code [j][byte value]}); each histogram is then folded into its channels' code-weighted sums.
 *
 * <p>8-bit codes, and spans too short to repay building 256-entry tables, take the direct route: unpack a row,
 * then a dot product or an axpy.
 */
final class PackedSpanKernel {
    private PackedSpanKernel() {
    }

    static void scores(QuantizedSpan span, int kvh, float[] q, int qOff, int groups, float[] scores, int total,
            int at, float scale, Scratch sc) {
        int headDim = span.headDim();
        int tokens = span.tokens();
        int bits = span.bits();
        boolean perToken = span.keyGranularity() == Granularity.PER_TOKEN;
        byte[] codes = loadCodes(span.keyCodes(), span, kvh, sc);
        sc.keyScale = loadParams(span.keyScale(), span.keyGranularity(), span, kvh, sc.keyScale);
        sc.keyOffset = loadParams(span.keyOffset(), span.keyGranularity(), span, kvh, sc.keyOffset);
        float[] sigma = sc.keyScale;
        float[] alpha = sc.keyOffset;

        // fold σ into the query (per-channel) and form the offset term of every head
        sc.weights = Scratch.grow(sc.weights, groups * headDim);
        sc.bias = Scratch.grow(sc.bias, groups);
        float[] w = sc.weights;
        float[] bias = sc.bias;
        for (int g = 0; g < groups; g++) {
            int qg = qOff + g * headDim;
            if (perToken) {
                System.arraycopy(q, qg, w, g * headDim, headDim);
                float s = 0;
                for (int d = 0; d < headDim; d++) {
                    s += q[qg + d];
                }
                bias[g] = s;
            } else {
                for (int d = 0; d < headDim; d++) {
                    w[g * headDim + d] = q[qg + d] * sigma[d];
                }
                bias[g] = Dot.dot(q, qg, alpha, 0, headDim);
            }
        }

        int rowBytes = span.bytesPerTokenRow();
        if (useTables(bits, tokens, headDim, rowBytes)) {
            sc.tables = Scratch.grow(sc.tables, groups * rowBytes * 256);
            float[] t = sc.tables;
            for (int g = 0; g < groups; g++) {
                buildTables(w, g * headDim, rowBytes, bits, t, g * rowBytes * 256);
            }
            for (int n = 0; n < tokens; n++) {
                int row = n * rowBytes;
                for (int g = 0; g < groups; g++) {
                    float dot = lookupSum(t, g * rowBytes * 256, codes, row, rowBytes);
                    float s = perToken ? sigma[n] * dot + alpha[n] * bias[g] : dot + bias[g];
                    scores[g * total + at + n] = s * scale;
                }
            }
        } else {
            sc.rows = Scratch.grow(sc.rows, headDim);
            float[] row = sc.rows;
            for (int n = 0; n < tokens; n++) {
                unpackRow(codes, n * rowBytes, rowBytes, bits, row);
                for (int g = 0; g < groups; g++) {
                    float dot = Dot.dot(w, g * headDim, row, 0, headDim);
                    float s = perToken ? sigma[n] * dot + alpha[n] * bias[g] : dot + bias[g];
                    scores[g * total + at + n] = s * scale;
                }
            }
        }
    }

    /** Adds the span's share of {@code Σ p·V̂} to {@code acc} ({@code [groups][headDim]}), p read from weights. */
    static void values(QuantizedSpan span, int kvh, int groups, float[] weights, int total, int at, float[] acc,
            Scratch sc) {
        int headDim = span.headDim();
        int tokens = span.tokens();
        int bits = span.bits();
        boolean perToken = span.valueGranularity() == Granularity.PER_TOKEN;
        byte[] codes = loadCodes(span.valueCodes(), span, kvh, sc);
        sc.valueScale = loadParams(span.valueScale(), span.valueGranularity(), span, kvh, sc.valueScale);
        sc.valueOffset = loadParams(span.valueOffset(), span.valueGranularity(), span, kvh, sc.valueOffset);
        float[] sigma = sc.valueScale;
        float[] alpha = sc.valueOffset;

        // sums[g]: Σ p (per-channel) or Σ p·α_n (per-token); channelSums[g][d]: Σ w_n·code[n,d]
        sc.bias = Scratch.grow(sc.bias, groups);
        sc.channelSums = Scratch.grow(sc.channelSums, groups * headDim);
        float[] offsetSums = sc.bias;
        float[] channelSums = sc.channelSums;
        java.util.Arrays.fill(offsetSums, 0, groups, 0f);
        java.util.Arrays.fill(channelSums, 0, groups * headDim, 0f);

        int rowBytes = span.bytesPerTokenRow();
        if (useTables(bits, tokens, headDim, rowBytes)) {
            int perGroup = rowBytes * 256;
            sc.tables = Scratch.grow(sc.tables, groups * perGroup);
            float[] hist = sc.tables;
            java.util.Arrays.fill(hist, 0, groups * perGroup, 0f);
            for (int n = 0; n < tokens; n++) {
                int row = n * rowBytes;
                for (int g = 0; g < groups; g++) {
                    float p = weights[g * total + at + n];
                    float wn = perToken ? p * sigma[n] : p;
                    offsetSums[g] += perToken ? p * alpha[n] : p;
                    int base = g * perGroup;
                    for (int j = 0; j < rowBytes; j++) {
                        hist[base + (j << 8) + (codes[row + j] & 0xFF)] += wn;
                    }
                }
            }
            for (int g = 0; g < groups; g++) {
                for (int j = 0; j < rowBytes; j++) {
                    foldHistogram(hist, g * perGroup + (j << 8), bits, channelSums, g * headDim + j * (8 / bits));
                }
            }
        } else {
            sc.rows = Scratch.grow(sc.rows, headDim);
            float[] row = sc.rows;
            for (int n = 0; n < tokens; n++) {
                unpackRow(codes, n * rowBytes, rowBytes, bits, row);
                for (int g = 0; g < groups; g++) {
                    float p = weights[g * total + at + n];
                    offsetSums[g] += perToken ? p * alpha[n] : p;
                    Dot.axpy(perToken ? p * sigma[n] : p, row, 0, channelSums, g * headDim, headDim);
                }
            }
        }

        for (int g = 0; g < groups; g++) {
            float o = offsetSums[g];
            int a = g * headDim;
            if (perToken) {
                for (int d = 0; d < headDim; d++) {
                    acc[a + d] += channelSums[a + d] + o;
                }
            } else {
                for (int d = 0; d < headDim; d++) {
                    acc[a + d] += sigma[d] * channelSums[a + d] + alpha[d] * o;
                }
            }
        }
    }

    /** Tables pay off when building them (256 entries per byte position) costs less than a direct pass. */
    private static boolean useTables(int bits, int tokens, int headDim, int rowBytes) {
        return bits <= 4 && (long) tokens * headDim > 2L * rowBytes * 256;
    }

    /**
     * For each byte position {@code j}, {@code t[j][v] = Σ_i w[channel(j, i)]·field_i(v)}. Built incrementally: an
     * entry is the entry with its lowest nonzero field cleared plus that field's term, one multiply-add per entry.
     */
    private static void buildTables(float[] w, int wOff, int rowBytes, int bits, float[] t, int tOff) {
        int perByte = 8 / bits;
        int mask = (1 << bits) - 1;
        for (int j = 0; j < rowBytes; j++) {
            int base = tOff + (j << 8);
            t[base] = 0f;
            for (int v = 1; v < 256; v++) {
                int lowField = Integer.numberOfTrailingZeros(v) / bits;
                int shift = lowField * bits;
                int field = (v >>> shift) & mask;
                int channel = j * perByte + (perByte - 1 - lowField);
                t[base + v] = t[base + (v & ~(mask << shift))] + w[wOff + channel] * field;
            }
        }
    }

    private static float lookupSum(float[] t, int tOff, byte[] codes, int row, int rowBytes) {
        float a0 = 0;
        float a1 = 0;
        int j = 0;
        for (; j + 2 <= rowBytes; j += 2) {
            a0 += t[tOff + (j << 8) + (codes[row + j] & 0xFF)];
            a1 += t[tOff + ((j + 1) << 8) + (codes[row + j + 1] & 0xFF)];
        }
        if (j < rowBytes) {
            a0 += t[tOff + (j << 8) + (codes[row + j] & 0xFF)];
        }
        return a0 + a1;
    }

    /**
     * Turns one byte position's histogram {@code h[v]} (total weight of tokens whose byte is {@code v}) into
     * {@code out[i] = Σ_v h[v]·field_i(v)} for its {@code 8/bits} channels, most significant field first. Field
     * {@code i}'s sum is read while the top field splits the table into {@code 2^bits} blocks; the blocks are then
     * added together, leaving a table over the remaining fields. Destroys {@code h}.
     */
    private static void foldHistogram(float[] h, int at, int bits, float[] out, int outOff) {
        int levels = (1 << bits) - 1;
        int size = 256;
        for (int i = 0; i < 8 / bits; i++) {
            int sub = size >> bits;
            float sum = 0;
            for (int c = 1; c <= levels; c++) {
                float block = 0;
                for (int k = 0; k < sub; k++) {
                    block += h[at + c * sub + k];
                }
                sum += c * block;
            }
            out[outOff + i] = sum;
            for (int c = 1; c <= levels; c++) {
                for (int k = 0; k < sub; k++) {
                    h[at + k] += h[at + c * sub + k];
                }
            }
            size = sub;
        }
    }

    private static void unpackRow(byte[] codes, int row, int rowBytes, int bits, float[] out) {
        int perByte = 8 / bits;
        int mask = (1 << bits) - 1;
        for (int j = 0; j < rowBytes; j++) {
            int v = codes[row + j] & 0xFF;
            for (int i = 0; i < perByte; i++) {
                out[j * perByte + i] = (v >>> (8 - bits * (i + 1))) & mask;
            }
        }
    }

    /** Copies the packed rows of KV head {@code kvh} into a heap array: {@code [tokens][rowBytes]}. */
    private static byte[] loadCodes(MemorySegment codes, QuantizedSpan span, int kvh, Scratch sc) {
        int bytes = span.tokens() * span.bytesPerTokenRow();
        sc.codes = Scratch.grow(sc.codes, bytes);
        MemorySegment.copy(codes, ValueLayout.JAVA_BYTE, (long) kvh * bytes, sc.codes, 0, bytes);
        return sc.codes;
    }

    private static float[] loadParams(MemorySegment params, Granularity granularity, QuantizedSpan span, int kvh,
            float[] dst) {
        int count = granularity == Granularity.PER_TOKEN ? span.tokens() : span.headDim();
        float[] out = Scratch.grow(dst, count);
        MemorySegment.copy(params, Elements.FLOAT_LE, (long) kvh * count * 4, out, 0, count);
        return out;
    }
}
