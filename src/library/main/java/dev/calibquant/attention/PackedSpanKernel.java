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
 * <p>When the group size is a multiple of 4, the tables and histograms of four query heads are interleaved
 * ({@code [j][byte][4]}) so each code read serves four heads. 8-bit codes, rows that are not whole 8-byte words,
 * and spans too short to repay building 256-entry tables take the direct route: unpack a row, then a dot product or
 * an axpy.
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
            long[] words = loadWords(span.keyCodes(), rowBytes, span, kvh, sc);
            int width = blockWidth(groups);
            int perBlock = rowBytes * 256 * width;
            sc.tables = Scratch.grow(sc.tables, groups * rowBytes * 256);
            float[] t = sc.tables;
            for (int g = 0; g < groups; g++) {
                buildTables(w, g * headDim, rowBytes, bits, t, (g / width) * perBlock + g % width, width);
            }
            for (int blk = 0; blk < groups / width; blk++) {
                int tOff = blk * perBlock;
                if (width == 4) {
                    lookupFour(t, tOff, words, rowBytes / 8, tokens, sigma, alpha, bias, blk * 4, perToken, scale,
                            scores, total, at);
                } else {
                    lookupOne(t, tOff, words, rowBytes / 8, tokens, sigma, alpha, bias, blk, perToken, scale,
                            scores, total, at);
                }
            }
        } else {
            byte[] codes = loadCodes(span.keyCodes(), rowBytes, span, kvh, sc);
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
        if (span.wideKeys() != null) {
            addLowBits(span, kvh, q, qOff, groups, sigma, scores, total, at, scale, sc);
        }
    }

    /**
     * Adds the low bits of the wide key channels to the scores: {@code Σ_i (q_c σ_c / 2)·low[n, i]} over the wide
     * channels {@code c}, σ the stored scale (the high bit's weight), read from per-byte tables as the 1-bit codes are.
     */
    private static void addLowBits(QuantizedSpan span, int kvh, float[] q, int qOff, int groups, float[] sigma,
            float[] scores, int total, int at, float scale, Scratch sc) {
        int headDim = span.headDim();
        int[] channels = span.wideKeys().channelsOf(kvh, headDim);
        int wide = channels.length;
        int rowBytes = wide / 8;
        // the main pass is done with the weights and tables: their arrays are reused
        sc.weights = Scratch.grow(sc.weights, groups * wide);
        float[] lw = sc.weights;
        for (int g = 0; g < groups; g++) {
            for (int i = 0; i < wide; i++) {
                lw[g * wide + i] = q[qOff + g * headDim + channels[i]] * (sigma[channels[i]] * 0.5f);
            }
        }
        sc.tables = Scratch.grow(sc.tables, groups * rowBytes * 256);
        float[] t = sc.tables;
        for (int g = 0; g < groups; g++) {
            buildTables(lw, g * wide, rowBytes, 1, t, g * rowBytes * 256, 1);
        }
        byte[] low = loadCodes(span.wideKeys().lowBits(), rowBytes, span, kvh, sc);
        for (int n = 0; n < span.tokens(); n++) {
            for (int g = 0; g < groups; g++) {
                int base = g * rowBytes * 256;
                float sum = 0;
                for (int j = 0; j < rowBytes; j++) {
                    sum += t[base + (j << 8) + (low[n * rowBytes + j] & 0xFF)];
                }
                scores[g * total + at + n] += sum * scale;
            }
        }
    }

    /**
     * Tables of four query heads interleaved ({@code [j][byte][4]}), so one code read serves all four; codes are
     * read eight bytes at a time, and two partial sums per head (even and odd bytes) keep eight additions in flight.
     */
    private static void lookupFour(float[] t, int tOff, long[] words, int rowWords, int tokens, float[] sigma,
            float[] alpha, float[] bias, int g0, boolean perToken, float scale, float[] scores, int total, int at) {
        float b0 = bias[g0];
        float b1 = bias[g0 + 1];
        float b2 = bias[g0 + 2];
        float b3 = bias[g0 + 3];
        int s0 = g0 * total + at;
        for (int n = 0; n < tokens; n++) {
            float a0 = 0;
            float a1 = 0;
            float a2 = 0;
            float a3 = 0;
            float c0 = 0;
            float c1 = 0;
            float c2 = 0;
            float c3 = 0;
            for (int w = 0; w < rowWords; w++) {
                long word = words[n * rowWords + w];
                int base = tOff + (w << 13);
                for (int k = 0; k < 8; k += 2) {
                    int x = base + ((k << 10) | (int) (word >>> (k << 3)) << 2 & 0x3FC);
                    int y = base + (((k + 1) << 10) | (int) (word >>> ((k + 1) << 3)) << 2 & 0x3FC);
                    a0 += t[x];
                    a1 += t[x + 1];
                    a2 += t[x + 2];
                    a3 += t[x + 3];
                    c0 += t[y];
                    c1 += t[y + 1];
                    c2 += t[y + 2];
                    c3 += t[y + 3];
                }
            }
            float sg = perToken ? sigma[n] : 1f;
            float al = perToken ? alpha[n] : 1f;
            scores[s0 + n] = (sg * (a0 + c0) + al * b0) * scale;
            scores[s0 + total + n] = (sg * (a1 + c1) + al * b1) * scale;
            scores[s0 + 2 * total + n] = (sg * (a2 + c2) + al * b2) * scale;
            scores[s0 + 3 * total + n] = (sg * (a3 + c3) + al * b3) * scale;
        }
    }

    private static void lookupOne(float[] t, int tOff, long[] words, int rowWords, int tokens, float[] sigma,
            float[] alpha, float[] bias, int g, boolean perToken, float scale, float[] scores, int total, int at) {
        float b = bias[g];
        int s0 = g * total + at;
        for (int n = 0; n < tokens; n++) {
            float a0 = 0;
            float a1 = 0;
            for (int w = 0; w < rowWords; w++) {
                long word = words[n * rowWords + w];
                int base = tOff + (w << 11);
                for (int k = 0; k < 8; k += 2) {
                    a0 += t[base + ((k << 8) | (int) (word >>> (k << 3)) & 0xFF)];
                    a1 += t[base + (((k + 1) << 8) | (int) (word >>> ((k + 1) << 3)) & 0xFF)];
                }
            }
            float dot = a0 + a1;
            scores[s0 + n] = (perToken ? sigma[n] * dot + alpha[n] * b : dot + b) * scale;
        }
    }

    /** Query heads handled together by one table or histogram block: four when the group splits into fours. */
    private static int blockWidth(int groups) {
        return groups % 4 == 0 ? 4 : 1;
    }

    /** Adds the span's share of {@code Σ p·V̂} to {@code acc} ({@code [groups][headDim]}), p read from weights. */
    static void values(QuantizedSpan span, int kvh, int groups, float[] weights, int total, int at, float[] acc,
            Scratch sc) {
        int headDim = span.headDim();
        int tokens = span.tokens();
        int bits = span.valueBits();
        boolean perToken = span.valueGranularity() == Granularity.PER_TOKEN;
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

        int rowBytes = span.valueBytesPerTokenRow();
        if (useTables(bits, tokens, headDim, rowBytes)) {
            long[] words = loadWords(span.valueCodes(), rowBytes, span, kvh, sc);
            int width = blockWidth(groups);
            int perBlock = rowBytes * 256 * width;
            sc.tables = Scratch.grow(sc.tables, groups * rowBytes * 256);
            float[] hist = sc.tables;
            java.util.Arrays.fill(hist, 0, groups * rowBytes * 256, 0f);
            for (int g = 0; g < groups; g++) {
                float o = 0;
                for (int n = 0; n < tokens; n++) {
                    o += perToken ? weights[g * total + at + n] * alpha[n] : weights[g * total + at + n];
                }
                offsetSums[g] = o;
            }
            for (int blk = 0; blk < groups / width; blk++) {
                if (width == 4) {
                    scatterFour(hist, blk * perBlock, words, rowBytes / 8, tokens, weights, blk * 4 * total + at,
                            total, perToken ? sigma : null);
                } else {
                    scatterOne(hist, blk * perBlock, words, rowBytes / 8, tokens, weights, blk * total + at,
                            perToken ? sigma : null);
                }
            }
            for (int blk = 0; blk < groups / width; blk++) {
                for (int j = 0; j < rowBytes; j++) {
                    foldHistogram(hist, blk * perBlock + (j << 8) * width, width, bits, channelSums,
                            blk * width * headDim + j * (8 / bits), headDim);
                }
            }
        } else {
            byte[] codes = loadCodes(span.valueCodes(), rowBytes, span, kvh, sc);
            sc.rows = Scratch.grow(sc.rows, headDim);
            sc.headAcc = Scratch.zeroed(sc.headAcc, groups, headDim);
            float[] row = sc.rows;
            float[][] heads = sc.headAcc;
            for (int n = 0; n < tokens; n++) {
                unpackRow(codes, n * rowBytes, rowBytes, bits, row);
                for (int g = 0; g < groups; g++) {
                    float p = weights[g * total + at + n];
                    offsetSums[g] += perToken ? p * alpha[n] : p;
                    Dot.axpy(perToken ? p * sigma[n] : p, row, heads[g], headDim);
                }
            }
            for (int g = 0; g < groups; g++) {
                System.arraycopy(heads[g], 0, channelSums, g * headDim, headDim);
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

    /** Adds each token's weight (times σ_n per-token) to its bin of every byte position, four heads at a time. */
    private static void scatterFour(float[] h, int hOff, long[] words, int rowWords, int tokens, float[] weights,
            int w0, int total, float[] perTokenScale) {
        for (int n = 0; n < tokens; n++) {
            float sg = perTokenScale == null ? 1f : perTokenScale[n];
            float p0 = weights[w0 + n] * sg;
            float p1 = weights[w0 + total + n] * sg;
            float p2 = weights[w0 + 2 * total + n] * sg;
            float p3 = weights[w0 + 3 * total + n] * sg;
            for (int w = 0; w < rowWords; w++) {
                long word = words[n * rowWords + w];
                int base = hOff + (w << 13);
                for (int k = 0; k < 8; k++) {
                    int x = base + ((k << 10) | (int) (word >>> (k << 3)) << 2 & 0x3FC);
                    h[x] += p0;
                    h[x + 1] += p1;
                    h[x + 2] += p2;
                    h[x + 3] += p3;
                }
            }
        }
    }

    private static void scatterOne(float[] h, int hOff, long[] words, int rowWords, int tokens, float[] weights,
            int w0, float[] perTokenScale) {
        for (int n = 0; n < tokens; n++) {
            float p = perTokenScale == null ? weights[w0 + n] : weights[w0 + n] * perTokenScale[n];
            for (int w = 0; w < rowWords; w++) {
                long word = words[n * rowWords + w];
                int base = hOff + (w << 11);
                for (int k = 0; k < 8; k++) {
                    h[base + ((k << 8) | (int) (word >>> (k << 3)) & 0xFF)] += p;
                }
            }
        }
    }

    /**
     * Tables pay off when building them (256 entries per byte position) costs less than a direct pass; they read
     * codes eight bytes at a time, so rows must be whole words.
     */
    private static boolean useTables(int bits, int tokens, int headDim, int rowBytes) {
        return bits <= 4 && rowBytes % 8 == 0 && (long) tokens * headDim > 2L * rowBytes * 256;
    }

    /**
     * For each byte position {@code j}, {@code t[j][v] = Σ_i w[channel(j, i)]·field_i(v)}, entry {@code v} at
     * {@code tOff + (j·256 + v)·stride}. Each nibble covers whole fields (bits ≤ 4), so a byte's entry is the sum of
     * its high and low nibble's entries, built first in two 16-entry tables: 256 independent additions per byte.
     */
    private static void buildTables(float[] w, int wOff, int rowBytes, int bits, float[] t, int tOff,
            int stride) {
        int perByte = 8 / bits;
        int perNibble = perByte / 2;
        int mask = (1 << bits) - 1;
        float[] high = new float[16];
        float[] low = new float[16];
        for (int j = 0; j < rowBytes; j++) {
            int channel0 = j * perByte;
            for (int v = 0; v < 16; v++) {
                float h = 0;
                float l = 0;
                for (int i = 0; i < perNibble; i++) {
                    int field = (v >>> (4 - bits * (i + 1))) & mask;
                    h += w[wOff + channel0 + i] * field;
                    l += w[wOff + channel0 + perNibble + i] * field;
                }
                high[v] = h;
                low[v] = l;
            }
            int base = tOff + (j << 8) * stride;
            for (int hi = 0; hi < 16; hi++) {
                float h = high[hi];
                int row = base + (hi << 4) * stride;
                for (int lo = 0; lo < 16; lo++) {
                    t[row + lo * stride] = h + low[lo];
                }
            }
        }
    }

    /**
     * Turns one byte position's histograms into code-weighted sums: for each of {@code width} interleaved heads
     * ({@code h[at + v·width + head]} is the weight of tokens whose byte is {@code v}),
     * {@code out[outOff + head·headDim + i] = Σ_v h[v]·field_i(v)} for the byte's {@code 8/bits} channels, most
     * significant field first. Field {@code i}'s sum is read while the top field splits the table into
     * {@code 2^bits} blocks; the blocks are then added together (contiguous runs, which the JIT vectorizes), leaving
     * a table over the remaining fields. Destroys {@code h}.
     */
    private static void foldHistogram(float[] h, int at, int width, int bits, float[] out, int outOff, int headDim) {
        int levels = (1 << bits) - 1;
        int size = 256;
        for (int i = 0; i < 8 / bits; i++) {
            int sub = size >> bits;
            for (int head = 0; head < width; head++) {
                float sum = 0;
                for (int c = 1; c <= levels; c++) {
                    float block = 0;
                    for (int k = 0; k < sub; k++) {
                        block += h[at + (c * sub + k) * width + head];
                    }
                    sum += c * block;
                }
                out[outOff + head * headDim + i] = sum;
            }
            int run = sub * width;
            for (int c = 1; c <= levels; c++) {
                int from = at + c * run;
                for (int k = 0; k < run; k++) {
                    h[at + k] += h[from + k];
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

    /**
     * Copies the packed rows of KV head {@code kvh} into a heap array of little-endian words, so byte {@code j} of a
     * row is bits {@code 8(j mod 8)..} of word {@code j / 8}: {@code [tokens][rowBytes / 8]}.
     */
    private static long[] loadWords(MemorySegment codes, int rowBytes, QuantizedSpan span, int kvh, Scratch sc) {
        int words = span.tokens() * rowBytes / 8;
        sc.words = Scratch.grow(sc.words, words);
        MemorySegment.copy(codes, WORD, (long) kvh * words * 8, sc.words, 0, words);
        return sc.words;
    }

    private static final ValueLayout.OfLong WORD =
            ValueLayout.JAVA_LONG_UNALIGNED.withOrder(java.nio.ByteOrder.LITTLE_ENDIAN);

    /** Copies the packed rows of KV head {@code kvh} into a heap array: {@code [tokens][rowBytes]}. */
    private static byte[] loadCodes(MemorySegment codes, int rowBytes, QuantizedSpan span, int kvh, Scratch sc) {
        int bytes = span.tokens() * rowBytes;
        sc.codes = Scratch.grow(sc.codes, bytes);
        MemorySegment.copy(codes, ValueLayout.JAVA_BYTE, (long) kvh * bytes, sc.codes, 0, bytes);
        return sc.codes;
    }

    private static float[] loadParams(MemorySegment params, Granularity granularity, QuantizedSpan span, int kvh,
            float[] dst) {
        int count = granularity == Granularity.PER_TOKEN ? span.tokens() : span.headDim();
        float[] out = Scratch.grow(dst, count);
        if (span.paramType() == dev.calibquant.quant.DType.FP32) {
            MemorySegment.copy(params, Elements.FLOAT_LE, (long) kvh * count * 4, out, 0, count);
        } else {
            for (int i = 0; i < count; i++) {
                out[i] = span.param(params, (long) kvh * count + i);
            }
        }
        return out;
    }
}
