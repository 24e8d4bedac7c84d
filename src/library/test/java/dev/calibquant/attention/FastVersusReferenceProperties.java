package dev.calibquant.attention;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.quant.Calibration;
import dev.calibquant.quant.CalibrationPolicy;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Granularity;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.TestTensors;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;

/**
 * The fast path (post-scaling, tables, histograms, fp32) against exact attention over explicitly dequantized spans,
 * within the error bound derived in {@link BoundedOracle}; and the double-precision {@link ReferenceAttention}
 * against the same exact values within u·|o| (its one fp32 rounding) plus 2^−40 relative for its double sums. Each
 * case draws fp32 or fp16 parameters, and 1-bit per-channel keys draw a number of wide key channels (0 included).
 */
class FastVersusReferenceProperties {

    @Property(tries = 60)
    void fastPathMatchesExplicitDequantizationWithinTheDerivedBound(@ForAll long seed, @ForAll("bits") int bits,
            @ForAll("bits") int valueBits, @ForAll("groups") int groups, @ForAll("headDims") int headDim, @ForAll boolean calibrate,
            @ForAll("policies") CalibrationPolicy policy, @ForAll("granularities") Granularity keyGranularity,
            @ForAll("granularities") Granularity valueGranularity, @ForAll("dtypes") DType dtype) {
        Random random = new Random(seed);
        QuantConfig config = QuantConfig.defaults(bits).withCalibrate(calibrate).withPolicy(policy)
                .withKeyGranularity(keyGranularity).withValueGranularity(valueGranularity).withValueBits(valueBits)
                .withParamType(random.nextBoolean() ? DType.FP32 : DType.FP16);
        if (bits == 1 && keyGranularity == Granularity.PER_CHANNEL && random.nextInt(3) > 0) {
            config = config.withWideKeyChannels(8 * random.nextInt(headDim / 8 + 1));
        }
        check(seed, random, config, groups, headDim, dtype);
    }

    /** Wide key channels and fp16 parameters on every case (the property above draws them now and then). */
    @Property(tries = 15)
    void wideKeyChannelsWithFp16ParametersStayWithinTheBound(@ForAll long seed, @ForAll("groups") int groups,
            @ForAll("headDims") int headDim, @ForAll boolean calibrate, @ForAll("dtypes") DType dtype) {
        Random random = new Random(seed);
        QuantConfig config = QuantConfig.defaults(1).withKeyClip(0.7f).withValueClip(0.7f)
                .withClipAnchor(dev.calibquant.quant.ClipAnchor.MIDPOINT).withCalibrate(calibrate)
                .withParamType(DType.FP16).withWideKeyChannels(8 * (1 + random.nextInt(headDim / 8)));
        check(seed, random, config, groups, headDim, dtype);
    }

    private static void check(long seed, Random random, QuantConfig config, int groups, int headDim, DType dtype) {
        Calibration calibration = config.calibration();
        int sequences = 1 + random.nextInt(3);
        int kvHeads = 1 + random.nextInt(2);
        int queryHeads = kvHeads * groups;
        try (Arena arena = Arena.ofShared()) { // shared: the fast path spreads tasks over threads
            List<TestKvView> batch = new ArrayList<>();
            for (int b = 0; b < sequences; b++) {
                int full = random.nextInt(4) == 0 ? 0 : random.nextInt(60);
                int[] spans = new int[random.nextInt(4)];
                for (int i = 0; i < spans.length; i++) {
                    spans[i] = switch (random.nextInt(4)) {
                        case 0 -> 1 + random.nextInt(3);
                        case 1 -> 1 + random.nextInt(60);
                        default -> 60 + random.nextInt(300);
                    };
                }
                if (full == 0 && spans.length == 0) {
                    full = 1;
                }
                batch.add(TestKvViews.random(arena, random, dtype, kvHeads, headDim, full, full + random.nextInt(5),
                        spans, config));
            }
            DType queryType = DType.values()[random.nextInt(3)];
            MemorySegment queries = TestKvViews.queries(arena, random, queryType, sequences, queryHeads, headDim);
            float[] q = TestTensors.read(queries, queryType);
            MemorySegment fastOut = arena.allocate(4L * sequences * queryHeads * headDim, 4);
            MemorySegment refOut = arena.allocate(fastOut.byteSize(), 4);
            new CpuCalibQuantAttention(calibration).decode(batch, queries, queryType, queryHeads, fastOut);
            new ReferenceAttention(calibration).decode(batch, queries, queryType, queryHeads, refOut);
            float[] fast = TestTensors.read(fastOut, DType.FP32);
            float[] ref = TestTensors.read(refOut, DType.FP32);

            for (int b = 0; b < sequences; b++) {
                for (int h = 0; h < queryHeads; h++) {
                    int row = (b * queryHeads + h) * headDim;
                    BoundedOracle.Result exact = BoundedOracle.attend(batch.get(b), h / groups, q, row, calibration);
                    for (int d = 0; d < headDim; d++) {
                        double o = exact.out()[d];
                        assertThat(Math.abs(fast[row + d] - o))
                                .as("seed %d sequence %d head %d channel %d: fast %s exact %s", seed, b, h, d,
                                        fast[row + d], o)
                                .isLessThanOrEqualTo(exact.bound()[d]);
                        assertThat(Math.abs(ref[row + d] - o))
                                .as("seed %d sequence %d head %d channel %d: reference", seed, b, h, d)
                                .isLessThanOrEqualTo(BoundedOracle.U * Math.abs(o) + 0x1p-40 * (1 + Math.abs(o)));
                    }
                }
            }
        }
    }

    @Provide
    Arbitrary<Integer> bits() {
        return Arbitraries.of(1, 2, 4, 8);
    }

    @Provide
    Arbitrary<Integer> groups() {
        return Arbitraries.of(1, 2, 4, 8);
    }

    @Provide
    Arbitrary<Integer> headDims() {
        return Arbitraries.of(64, 128);
    }

    @Provide
    Arbitrary<CalibrationPolicy> policies() {
        return Arbitraries.of(CalibrationPolicy.class);
    }

    @Provide
    Arbitrary<Granularity> granularities() {
        return Arbitraries.of(Granularity.class);
    }

    @Provide
    Arbitrary<DType> dtypes() {
        return Arbitraries.of(DType.class);
    }
}
