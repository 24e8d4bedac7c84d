package dev.calibquant.quant;

import java.lang.foreign.MemorySegment;
import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;
import java.lang.foreign.SegmentAllocator;
import java.util.Objects;

/**
 * Quantizes one visual span (keys and values, every KV head) with the clipped min/max rule of spec §2.
 *
 * <p>Per group of elements sharing statistics (a channel over the span's tokens by default):
 * {@code α = c·min}, {@code β = c·max}, {@code σ = (β − α)/L}, {@code code = round_half_even(clamp((x − α)/σ, 0, L))},
 * which is {@code x/σ + z} with {@code z = −α/σ}. The code is decided in exact arithmetic on the real σ (see
 * {@link #code}); with 1 bit, therefore, a code is 1 exactly when {@code x > (α + β)/2}. The stored scale is σ
 * rounded to fp32, the stored offset is α. A group with {@code α == β} (constant channel, one-token span) stores
 * code 0, scale 0, offset α.
 *
 * <p>With fp16 parameters ({@link QuantConfig#paramType}) the stored offset is {@code α₁₆ = fp16(α)} and the step
 * {@code σ₁₆ = fp16(σ)}, and the code is decided on that stored grid: {@code round_half_even(clamp((x − α₁₆)/σ₁₆, 0,
 * L))}, the level nearest to what decode rebuilds. A step that rounds to 0 stores code 0 and scale 0; an offset or
 * step beyond fp16's range is refused before anything is allocated.
 *
 * <p>Wide key channels ({@link QuantConfig#wideKeyChannels}): per KV head, the channels of widest range
 * {@code max − min} (ties: lower channel first) are coded on 2 bits over their full range {@code [min, max]}, with no
 * clip; the high bit goes into the 1-bit key codes, the low bit into the span's low-bit plane, and the stored scale
 * is twice the step (the high bit's weight; see {@link QuantizedSpan}).
 *
 * <p>Everything is validated (shapes, finiteness of every input element) before anything is allocated; the span's
 * segments come from one allocation of exactly {@link #bytesFor} bytes, laid out
 * {@code [keyScale][keyOffset][valueScale][valueOffset][keyCodes][valueCodes]}, then, with wide key channels,
 * {@code [wideMask][wideLowBits]}.
 */
public final class ChannelQuantizer {
    private ChannelQuantizer() {
    }

    /** Exact bytes of every segment of a span (codes, scales and offsets, wide-channel planes; keys and values). */
    public static long bytesFor(QuantConfig config, int kvHeads, int tokens, int headDim) {
        Objects.requireNonNull(config, "config");
        if (kvHeads <= 0 || tokens <= 0 || headDim <= 0) {
            throw new InvalidShapeException("kvHeads, tokens and headDim must be > 0, got " + kvHeads + ", " + tokens
                    + ", " + headDim);
        }
        config.requireFits(headDim);
        long keyCodeBytes = Math.multiplyExact((long) kvHeads * tokens, BitPacking.rowBytes(headDim, config.bits()));
        long valueCodeBytes = Math.multiplyExact((long) kvHeads * tokens,
                BitPacking.rowBytes(headDim, config.valueBits()));
        long keyParams = paramCount(config.keyGranularity(), kvHeads, tokens, headDim);
        long valueParams = paramCount(config.valueGranularity(), kvHeads, tokens, headDim);
        return Math.addExact(Math.addExact(Math.addExact(keyCodeBytes, valueCodeBytes),
                Math.multiplyExact(2L * config.paramType().byteSize(), keyParams + valueParams)),
                wideBytes(config, kvHeads, tokens, headDim));
    }

    /** Bytes of the wide-channel mask and low-bit plane of a span's keys; 0 without wide key channels. */
    public static long wideBytes(QuantConfig config, int kvHeads, int tokens, int headDim) {
        config.requireFits(headDim);
        return wideMaskBytes(config, kvHeads, headDim) + wideLowBitBytes(config, kvHeads, tokens);
    }

    /** Bytes of the wide-channel mask, {@code [kvHeads][headDim / 8]}; 0 without wide key channels. */
    public static long wideMaskBytes(QuantConfig config, int kvHeads, int headDim) {
        return config.wideKeyChannels() == 0 ? 0 : (long) kvHeads * (headDim / 8);
    }

    /** Bytes of the wide channels' low bits, {@code [kvHeads][tokens][channels / 8]}; 0 without wide key channels. */
    public static long wideLowBitBytes(QuantConfig config, int kvHeads, int tokens) {
        return Math.multiplyExact((long) kvHeads * tokens, config.wideKeyChannels() / 8);
    }

    /** Number of scales (= number of offsets) of one tensor: {@code kvHeads × headDim}, or {@code × tokens}. */
    public static long paramCount(Granularity granularity, int kvHeads, int tokens, int headDim) {
        return (long) kvHeads * (granularity == Granularity.PER_TOKEN ? tokens : headDim);
    }

    public static QuantizedSpan quantize(QuantConfig config, KvSlice keys, KvSlice values, SegmentAllocator alloc) {
        Objects.requireNonNull(config, "config");
        Objects.requireNonNull(keys, "keys");
        Objects.requireNonNull(values, "values");
        Objects.requireNonNull(alloc, "alloc");
        if (keys.kvHeads() != values.kvHeads() || keys.tokens() != values.tokens()
                || keys.headDim() != values.headDim()) {
            throw new InvalidShapeException("keys are [" + keys.kvHeads() + "][" + keys.tokens() + "]["
                    + keys.headDim() + "] but values are [" + values.kvHeads() + "][" + values.tokens() + "]["
                    + values.headDim() + "]");
        }
        int kvHeads = keys.kvHeads();
        int tokens = keys.tokens();
        int headDim = keys.headDim();
        int bits = config.bits();
        long total = bytesFor(config, kvHeads, tokens, headDim);

        GroupStats keyStats = GroupStats.measure("keys", keys, config.keyGranularity(), config.keyClip(),
                config.clipAnchor(), config.levels(), config.paramType(), config.wideKeyChannels());
        GroupStats valueStats = GroupStats.measure("values", values, config.valueGranularity(), config.valueClip(),
                config.clipAnchor(), config.valueLevels(), config.paramType(), 0);

        MemorySegment block = alloc.allocate(total, Float.BYTES);
        int paramSize = config.paramType().byteSize();
        long keyParamBytes = paramSize * paramCount(config.keyGranularity(), kvHeads, tokens, headDim);
        long valueParamBytes = paramSize * paramCount(config.valueGranularity(), kvHeads, tokens, headDim);
        long codeBytes = (long) kvHeads * tokens * BitPacking.rowBytes(headDim, bits);
        long valueCodeBytes = (long) kvHeads * tokens * BitPacking.rowBytes(headDim, config.valueBits());
        long at = 0;
        MemorySegment keyScale = block.asSlice(at, keyParamBytes);
        at += keyParamBytes;
        MemorySegment keyOffset = block.asSlice(at, keyParamBytes);
        at += keyParamBytes;
        MemorySegment valueScale = block.asSlice(at, valueParamBytes);
        at += valueParamBytes;
        MemorySegment valueOffset = block.asSlice(at, valueParamBytes);
        at += valueParamBytes;
        MemorySegment keyCodes = block.asSlice(at, codeBytes);
        at += codeBytes;
        MemorySegment valueCodes = block.asSlice(at, valueCodeBytes);
        at += valueCodeBytes;
        QuantizedSpan.WideKeys wide = null;
        if (config.wideKeyChannels() > 0) {
            long maskBytes = wideMaskBytes(config, kvHeads, headDim);
            MemorySegment mask = block.asSlice(at, maskBytes);
            MemorySegment low = block.asSlice(at + maskBytes, wideLowBitBytes(config, kvHeads, tokens));
            keyStats.writeMask(mask);
            wide = new QuantizedSpan.WideKeys(config.wideKeyChannels(), mask, low);
        }

        keyStats.writeParams(keyScale, keyOffset);
        valueStats.writeParams(valueScale, valueOffset);
        writeCodes(keys, keyStats, bits, keyCodes, wide);
        writeCodes(values, valueStats, config.valueBits(), valueCodes, null);
        return new QuantizedSpan(tokens, kvHeads, headDim, bits, config.keyGranularity(),
                config.valueGranularity(), keyCodes, valueCodes, keyScale, keyOffset, valueScale, valueOffset,
                config.valueBits(), config.paramType(), wide);
    }

    /**
     * The code of {@code x} in a group with clipped range {@code [alpha, beta]} and {@code levels = 2^bits − 1}:
     * {@code round_half_even(clamp((x − α)·L/(β − α), 0, L))} in exact arithmetic, or 0 when the group is degenerate
     * ({@code α == β}).
     *
     * <p>The quotient is formed in double with three roundings, a relative error below 2^−51, i.e. an absolute error
     * below {@code L·2^−51}. Only a quotient that close to a half-integer could round the wrong way; those (ties
     * included) are decided again in exact decimal arithmetic.
     */
    public static int code(float x, float alpha, float beta, int levels) {
        if (alpha == beta) {
            return 0;
        }
        double u = ((double) x - alpha) * levels / ((double) beta - alpha);
        return round(u, levels, () -> new BigDecimal(x).subtract(new BigDecimal(alpha))
                .multiply(BigDecimal.valueOf(levels)).divide(new BigDecimal(beta).subtract(new BigDecimal(alpha)),
                        EXACT));
    }

    /**
     * The code of {@code x} on the stored grid {@code α + step·c}, {@code c} in {@code [0, levels]}:
     * {@code round_half_even(clamp((x − α)/step, 0, levels))} in exact arithmetic, 0 when {@code step} is 0.
     */
    public static int codeOnGrid(float x, float alpha, float step, int levels) {
        if (step == 0) {
            return 0;
        }
        double u = ((double) x - alpha) / step;
        return round(u, levels, () -> new BigDecimal(x).subtract(new BigDecimal(alpha))
                .divide(new BigDecimal(step), EXACT));
    }

    // float operands have at most ~300 significant digits after scaling; 400 digits keep a tie a tie
    private static final MathContext EXACT = new MathContext(400, RoundingMode.HALF_EVEN);

    /**
     * {@code round_half_even(clamp(u, 0, levels))} for a quotient {@code u} formed in double (relative error below
     * 2^−51); one that close to a half-integer is decided again on its exact value.
     */
    private static int round(double u, int levels, java.util.function.Supplier<BigDecimal> exact) {
        if (Math.abs(u - Math.floor(u) - 0.5) <= levels * 0x1p-45) {
            BigDecimal q = exact.get().max(BigDecimal.ZERO).min(BigDecimal.valueOf(levels));
            return q.setScale(0, RoundingMode.HALF_EVEN).intValueExact();
        }
        return (int) Math.rint(Math.min(levels, Math.max(0.0, u)));
    }

    private static void writeCodes(KvSlice slice, GroupStats stats, int bits, MemorySegment dst,
            QuantizedSpan.WideKeys wide) {
        int headDim = slice.headDim();
        int rowBytes = BitPacking.rowBytes(headDim, bits);
        int wideBytes = wide == null ? 0 : wide.channels() / 8;
        float[] row = new float[headDim];
        short[] scratch = new short[headDim];
        int[] codes = new int[headDim];
        int[] low = new int[wide == null ? 0 : wide.channels()];
        for (int h = 0; h < slice.kvHeads(); h++) {
            for (int n = 0; n < slice.tokens(); n++) {
                Elements.readRow(slice.data(), slice.dtype(), slice.rowIndex(h, n), row, 0, headDim, scratch);
                int w = 0;
                for (int d = 0; d < headDim; d++) {
                    int g = stats.group(h, n, d);
                    int c = stats.code(g, row[d]);
                    if (stats.wide[g]) { // 2 bits: the high bit with the 1-bit codes, the low bit in its own plane
                        codes[d] = c >> 1;
                        low[w++] = c & 1;
                    } else {
                        codes[d] = c;
                    }
                }
                long rowIndex = (long) h * slice.tokens() + n;
                BitPacking.packRow(codes, headDim, bits, dst, rowIndex * rowBytes);
                if (wide != null) {
                    BitPacking.packRow(low, low.length, 1, wide.lowBits(), rowIndex * wideBytes);
                }
            }
        }
    }

    /** Clipped range {@code [α, β]} and scale σ of every group of one tensor, indexed {@code [head][group]}. */
    private static final class GroupStats {
        final Granularity granularity;
        final int groupsPerHead;
        final int headDim;
        final DType paramType;
        final float[] alpha;
        final float[] beta;
        /** The step between levels: the fp32 σ, or σ₁₆ with fp16 parameters. */
        final float[] scale;
        final int[] levels;
        /** Whether a group is a wide key channel (2 bits, full range). */
        final boolean[] wide;

        private GroupStats(Granularity granularity, int kvHeads, int groupsPerHead, int headDim, DType paramType) {
            this.granularity = granularity;
            this.groupsPerHead = groupsPerHead;
            this.headDim = headDim;
            this.paramType = paramType;
            this.alpha = new float[kvHeads * groupsPerHead];
            this.beta = new float[kvHeads * groupsPerHead];
            this.scale = new float[kvHeads * groupsPerHead];
            this.levels = new int[kvHeads * groupsPerHead];
            this.wide = new boolean[kvHeads * groupsPerHead];
        }

        /** The code of {@code x} in group {@code g}: on the exact range (fp32) or on the stored grid (fp16). */
        int code(int g, float x) {
            return paramType == DType.FP32 ? ChannelQuantizer.code(x, alpha[g], beta[g], levels[g])
                    : codeOnGrid(x, alpha[g], scale[g], levels[g]);
        }

        int group(int head, int token, int channel) {
            return head * groupsPerHead + switch (granularity) {
                case PER_CHANNEL -> channel;
                case GLOBAL -> 0;
                case PER_TOKEN -> token;
            };
        }

        /** Reads every element once: checks it is finite and folds it into its group's min and max. */
        static GroupStats measure(String tensor, KvSlice slice, Granularity granularity, float clip, ClipAnchor anchor,
                int levels, DType paramType, int wideChannels) {
            Objects.requireNonNull(granularity, "granularity");
            int headDim = slice.headDim();
            int groupsPerHead = switch (granularity) {
                case PER_CHANNEL -> headDim;
                case GLOBAL -> 1;
                case PER_TOKEN -> slice.tokens();
            };
            GroupStats stats = new GroupStats(granularity, slice.kvHeads(), groupsPerHead, headDim, paramType);
            float[] min = stats.alpha;
            float[] max = stats.beta;
            java.util.Arrays.fill(min, Float.POSITIVE_INFINITY);
            java.util.Arrays.fill(max, Float.NEGATIVE_INFINITY);
            float[] row = new float[headDim];
            short[] scratch = new short[headDim];
            for (int h = 0; h < slice.kvHeads(); h++) {
                for (int n = 0; n < slice.tokens(); n++) {
                    Elements.readRow(slice.data(), slice.dtype(), slice.rowIndex(h, n), row, 0, headDim, scratch);
                    for (int d = 0; d < headDim; d++) {
                        float x = row[d];
                        if (!Float.isFinite(x)) {
                            throw new NonFiniteInputException(tensor, h, n, d, x);
                        }
                        int g = stats.group(h, n, d);
                        min[g] = Math.min(min[g], x);
                        max[g] = Math.max(max[g], x);
                    }
                }
            }
            if (wideChannels > 0) {
                markWidest(stats, slice.kvHeads(), wideChannels);
            }
            for (int g = 0; g < min.length; g++) {
                float a;
                float b;
                stats.levels[g] = stats.wide[g] ? 3 : levels;
                if (stats.wide[g]) { // full range, no clip
                    a = min[g];
                    b = max[g];
                } else if (anchor == ClipAnchor.ZERO) {
                    a = clip * min[g];
                    b = clip * max[g];
                } else { // midpoint and half-width exact in double; c = 1 gives back min and max exactly
                    double mid = ((double) min[g] + max[g]) / 2;
                    double half = ((double) max[g] - min[g]) / 2;
                    a = (float) (mid - clip * half);
                    b = (float) (mid + clip * half);
                }
                stats.alpha[g] = a;
                stats.beta[g] = b;
                float sigma = (float) (((double) b - a) / stats.levels[g]);
                if (Float.isInfinite(sigma)) {
                    throw new IllegalArgumentException(tensor + ": range [" + a + ", " + b + "] of group " + g
                            + " gives a scale beyond fp32");
                }
                if (paramType == DType.FP16) {
                    stats.alpha[g] = Half.fp16ToFloat(Half.floatToFp16(a));
                    sigma = a == b ? 0f : Half.fp16ToFloat(Half.floatToFp16(sigma));
                    float stored = stats.wide[g] ? 2 * sigma : sigma;
                    if (Float.isInfinite(stats.alpha[g]) || Float.isInfinite(Half.fp16ToFloat(Half.floatToFp16(stored)))) {
                        throw new IllegalArgumentException(tensor + ": range [" + a + ", " + b + "] of group " + g
                                + " does not fit fp16 parameters (|value| up to 65504); use fp32 parameters");
                    }
                }
                stats.scale[g] = sigma;
            }
            return stats;
        }

        /** Per head, marks the {@code count} channels of widest range (max − min, in double; ties: lower first). */
        private static void markWidest(GroupStats stats, int kvHeads, int count) {
            float[] min = stats.alpha;
            float[] max = stats.beta;
            int d = stats.groupsPerHead;
            for (int h = 0; h < kvHeads; h++) {
                int base = h * d;
                Integer[] order = new Integer[d];
                for (int i = 0; i < d; i++) {
                    order[i] = i;
                }
                java.util.Arrays.sort(order, (x, y) -> {
                    int c = Double.compare((double) max[base + y] - min[base + y], (double) max[base + x] - min[base + x]);
                    return c != 0 ? c : Integer.compare(x, y);
                });
                for (int i = 0; i < count; i++) {
                    stats.wide[base + order[i]] = true;
                }
            }
        }

        /** Per head, the wide channels as bits ({@link QuantizedSpan.WideKeys#mask}). */
        void writeMask(MemorySegment mask) {
            int heads = alpha.length / groupsPerHead;
            for (int h = 0; h < heads; h++) {
                for (int j = 0; j < headDim / 8; j++) {
                    int b = 0;
                    for (int i = 0; i < 8; i++) {
                        b = (b << 1) | (wide[h * groupsPerHead + 8 * j + i] ? 1 : 0);
                    }
                    mask.set(java.lang.foreign.ValueLayout.JAVA_BYTE, (long) h * (headDim / 8) + j, (byte) b);
                }
            }
        }

        /** Scales and offsets, broadcast to {@code [head][headDim]} for GLOBAL. */
        void writeParams(MemorySegment scaleDst, MemorySegment offsetDst) {
            int heads = alpha.length / groupsPerHead;
            int stored = granularity == Granularity.GLOBAL ? headDim : groupsPerHead;
            for (int h = 0; h < heads; h++) {
                for (int i = 0; i < stored; i++) {
                    int g = h * groupsPerHead + (granularity == Granularity.GLOBAL ? 0 : i);
                    long index = (long) h * stored + i;
                    Elements.write(scaleDst, paramType, index, wide[g] ? 2 * scale[g] : scale[g]);
                    Elements.write(offsetDst, paramType, index, alpha[g]);
                }
            }
        }
    }
}
