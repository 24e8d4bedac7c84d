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
 * <p>Everything is validated (shapes, finiteness of every input element) before anything is allocated; the span's
 * segments come from one allocation of exactly {@link #bytesFor} bytes, laid out
 * {@code [keyScale][keyOffset][valueScale][valueOffset][keyCodes][valueCodes]}.
 */
public final class ChannelQuantizer {
    private ChannelQuantizer() {
    }

    /** Exact bytes of every segment of a span (codes and fp32 scales and offsets, keys and values). */
    public static long bytesFor(QuantConfig config, int kvHeads, int tokens, int headDim) {
        Objects.requireNonNull(config, "config");
        if (kvHeads <= 0 || tokens <= 0 || headDim <= 0) {
            throw new InvalidShapeException("kvHeads, tokens and headDim must be > 0, got " + kvHeads + ", " + tokens
                    + ", " + headDim);
        }
        long keyCodeBytes = Math.multiplyExact((long) kvHeads * tokens, BitPacking.rowBytes(headDim, config.bits()));
        long valueCodeBytes = Math.multiplyExact((long) kvHeads * tokens,
                BitPacking.rowBytes(headDim, config.valueBits()));
        long keyParams = paramCount(config.keyGranularity(), kvHeads, tokens, headDim);
        long valueParams = paramCount(config.valueGranularity(), kvHeads, tokens, headDim);
        return Math.addExact(Math.addExact(keyCodeBytes, valueCodeBytes),
                Math.multiplyExact(8L, keyParams + valueParams));
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
                config.clipAnchor(), config.levels());
        GroupStats valueStats = GroupStats.measure("values", values, config.valueGranularity(), config.valueClip(),
                config.clipAnchor(), config.valueLevels());

        MemorySegment block = alloc.allocate(total, Float.BYTES);
        long keyParamBytes = 4 * paramCount(config.keyGranularity(), kvHeads, tokens, headDim);
        long valueParamBytes = 4 * paramCount(config.valueGranularity(), kvHeads, tokens, headDim);
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

        keyStats.writeParams(keyScale, keyOffset);
        valueStats.writeParams(valueScale, valueOffset);
        writeCodes(keys, keyStats, bits, keyCodes);
        writeCodes(values, valueStats, config.valueBits(), valueCodes);
        return new QuantizedSpan(tokens, kvHeads, headDim, bits, config.keyGranularity(),
                config.valueGranularity(), keyCodes, valueCodes, keyScale, keyOffset, valueScale, valueOffset,
                config.valueBits());
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
        if (Math.abs(u - Math.floor(u) - 0.5) <= levels * 0x1p-45) {
            return exactCode(x, alpha, beta, levels);
        }
        return (int) Math.rint(Math.min(levels, Math.max(0.0, u)));
    }

    private static int exactCode(float x, float alpha, float beta, int levels) {
        BigDecimal a = new BigDecimal(alpha);
        BigDecimal numerator = new BigDecimal(x).subtract(a).multiply(BigDecimal.valueOf(levels));
        BigDecimal denominator = new BigDecimal(beta).subtract(a);
        // float operands have at most ~300 significant digits after scaling; 400 digits keep a tie a tie
        BigDecimal u = numerator.divide(denominator, new MathContext(400, RoundingMode.HALF_EVEN));
        u = u.max(BigDecimal.ZERO).min(BigDecimal.valueOf(levels));
        return u.setScale(0, RoundingMode.HALF_EVEN).intValueExact();
    }

    private static void writeCodes(KvSlice slice, GroupStats stats, int bits, MemorySegment dst) {
        int headDim = slice.headDim();
        int rowBytes = BitPacking.rowBytes(headDim, bits);
        int levels = (1 << bits) - 1;
        float[] row = new float[headDim];
        short[] scratch = new short[headDim];
        int[] codes = new int[headDim];
        for (int h = 0; h < slice.kvHeads(); h++) {
            for (int n = 0; n < slice.tokens(); n++) {
                Elements.readRow(slice.data(), slice.dtype(), slice.rowIndex(h, n), row, 0, headDim, scratch);
                for (int d = 0; d < headDim; d++) {
                    int g = stats.group(h, n, d);
                    codes[d] = code(row[d], stats.alpha[g], stats.beta[g], levels);
                }
                BitPacking.packRow(codes, headDim, bits, dst, ((long) h * slice.tokens() + n) * rowBytes);
            }
        }
    }

    /** Clipped range {@code [α, β]} and scale σ of every group of one tensor, indexed {@code [head][group]}. */
    private static final class GroupStats {
        final Granularity granularity;
        final int groupsPerHead;
        final int headDim;
        final float[] alpha;
        final float[] beta;
        final float[] scale;

        private GroupStats(Granularity granularity, int kvHeads, int groupsPerHead, int headDim) {
            this.granularity = granularity;
            this.groupsPerHead = groupsPerHead;
            this.headDim = headDim;
            this.alpha = new float[kvHeads * groupsPerHead];
            this.beta = new float[kvHeads * groupsPerHead];
            this.scale = new float[kvHeads * groupsPerHead];
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
                int levels) {
            Objects.requireNonNull(granularity, "granularity");
            int headDim = slice.headDim();
            int groupsPerHead = switch (granularity) {
                case PER_CHANNEL -> headDim;
                case GLOBAL -> 1;
                case PER_TOKEN -> slice.tokens();
            };
            GroupStats stats = new GroupStats(granularity, slice.kvHeads(), groupsPerHead, headDim);
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
            for (int g = 0; g < min.length; g++) {
                float a;
                float b;
                if (anchor == ClipAnchor.ZERO) {
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
                float sigma = (float) (((double) b - a) / levels);
                if (Float.isInfinite(sigma)) {
                    throw new IllegalArgumentException(tensor + ": range [" + a + ", " + b + "] of group " + g
                            + " gives a scale beyond fp32");
                }
                stats.scale[g] = sigma;
            }
            return stats;
        }

        /** Scales and offsets, broadcast to {@code [head][headDim]} for GLOBAL. */
        void writeParams(MemorySegment scaleDst, MemorySegment offsetDst) {
            int heads = alpha.length / groupsPerHead;
            int stored = granularity == Granularity.GLOBAL ? headDim : groupsPerHead;
            for (int h = 0; h < heads; h++) {
                for (int i = 0; i < stored; i++) {
                    int g = h * groupsPerHead + (granularity == Granularity.GLOBAL ? 0 : i);
                    long index = (long) h * stored + i;
                    scaleDst.setAtIndex(Elements.FLOAT_LE, index, scale[g]);
                    offsetDst.setAtIndex(Elements.FLOAT_LE, index, alpha[g]);
                }
            }
        }
    }
}
