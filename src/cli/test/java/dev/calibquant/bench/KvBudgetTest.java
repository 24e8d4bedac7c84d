package dev.calibquant.bench;

import dev.calibquant.selftest.GpuScenario;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.MemoryUsage;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.testing.Seeds;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.Random;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.constraints.IntRange;
import org.junit.jupiter.api.Test;

class KvBudgetTest {
    private static final long GB_100 = 100_000_000_000L;

    @Test
    void aHundredGigabytesOverAllLayersHold206Fp16Or1331OneBitSequences() {
        // By hand, per layer, 256 generated tokens reserved:
        // fp16: 2 · 8 · (3433 + 256) · 128 · 2 = 15,110,144 bytes; × 32 = 483,524,608; 10^11 / that = 206.8
        // 1-bit: 2 · 8 · (105 + 256) · 128 · 2 = 1,478,656 fp16 rows + 2 · 8 · 3328 · 16 = 851,968 codes
        //        + 4 · 4 · 8 · 128 = 16,384 scales = 2,347,008; × 32 = 75,104,256; 10^11 / that = 1331.5
        MemoryUsage fp16Seq = BudgetFormula.sequence(false, 32, 256);
        MemoryUsage oneBitSeq = BudgetFormula.sequence(true, 32, 256);
        assertThat(fp16Seq.totalBytes()).isEqualTo(483_524_608L);
        assertThat(oneBitSeq.totalBytes()).isEqualTo(75_104_256L);

        KvBudget.Fit fp16 = KvBudget.fit("fp16", KvBudget.bytesOfGigabytes(100), 32, fp16Seq);
        KvBudget.Fit oneBit = KvBudget.fit("1-bit", KvBudget.bytesOfGigabytes(100), 32, oneBitSeq);
        assertThat(fp16.sequences()).isEqualTo(206);
        assertThat(oneBit.sequences()).isEqualTo(1331);
        assertThat(fp16.sequenceLayerBytes()).isEqualTo(15_110_144L);
        assertThat(oneBit.sequenceLayerBytes()).isEqualTo(2_347_008L);
        assertThat(fp16.layerBytes()).isEqualTo(206 * 15_110_144L);
        assertThat(oneBit.usedBytes()).isEqualTo(1331 * 75_104_256L).isLessThanOrEqualTo(GB_100);
        assertThat(GB_100 - oneBit.usedBytes()).isLessThan(oneBit.sequenceBytes()); // no room for one more
    }

    @Test
    void withOneTokenReservedTheFormulaIsTheBenchmarkFloorOfOneSequencePlusThatToken() {
        // BENCHMARKS.md counts 2 · B · 8 · 3433 · 128 · 2 bytes for an fp16 step: one sequence, one layer, B = 1
        long token = 2L * 8 * 128 * 2;
        assertThat(BudgetFormula.sequence(false, 1, 1).totalBytes())
                .isEqualTo((long) DecodeBenchmark.fp16FloorBytes(1) + token);
        // and for 1-bit, 2 · B · 8 · 3328 · 16 code bytes plus 2 · B · 8 · 105 · 128 · 2 fp16 bytes, before scales
        MemoryUsage one = BudgetFormula.sequence(true, 1, 1);
        assertThat(one.visualCodeBytes() + one.fullPrecisionBytes())
                .isEqualTo(2L * 8 * 3328 * 16 + 2L * 8 * 105 * 128 * 2 + token);
    }

    /**
     * The formula's terms against the host cache's own accounting of real sequences (2 layers, the benchmark's
     * prompt, filled with random data): codes and scales must agree exactly; full precision must be the formula at
     * the rows the host block reserves (its own capacity policy, read back from the view).
     */
    @Test
    void theFormulaAgreesWithTheHostCachesAccountingOfRealSequences() {
        long seed = Seeds.fresh("KvBudgetTest");
        Random random = new Random(seed);
        ModelGeometry g = new ModelGeometry(2, 32, 8, 128);
        List<TokenSpan> spans = List.of(new TokenSpan(41, 41 + 3328));
        try (Arena arena = Arena.ofConfined(); KvCacheManager cache = KvCacheManager.onHost(g, DType.FP16)) {
            for (boolean oneBit : new boolean[] {false, true}) {
                try (Sequence s = oneBit ? cache.createSequence(3433, spans, QuantConfig.defaults(1))
                        : cache.createSequence(3433)) {
                    for (int l = 0; l < 2; l++) {
                        s.fill(l, GpuScenario.fp16(arena, GpuScenario.normal(random, 8, 3433, 128, 4)),
                                GpuScenario.fp16(arena, GpuScenario.normal(random, 8, 3433, 128, 0)), DType.FP16);
                    }
                    LayerKvView view = s.layer(0);
                    MemoryUsage formula = BudgetFormula.sequence(oneBit, 2, 0);
                    MemoryUsage host = s.usage();
                    String as = "seed " + seed + (oneBit ? " 1-bit" : " fp16");
                    assertThat(host.visualCodeBytes()).as(as).isEqualTo(formula.visualCodeBytes());
                    assertThat(host.visualScaleBytes()).as(as).isEqualTo(formula.visualScaleBytes());
                    assertThat(host.fp16Bytes()).as(as).isEqualTo(formula.fp16Bytes());
                    assertThat(host.fullPrecisionBytes()).as(as)
                            .isEqualTo(BudgetFormula.fullPrecisionBytes(2, view.fullCapacity()));
                }
            }
        }
    }

    @Test
    void aBudgetSmallerThanOneSequenceIsRefusedByName() {
        MemoryUsage seq = BudgetFormula.sequence(false, 32, 256);
        assertThat(KvBudget.fit("fp16", seq.totalBytes(), 32, seq).sequences()).isEqualTo(1);
        assertThatThrownBy(() -> KvBudget.fit("fp16", seq.totalBytes() - 1, 32, seq))
                .isInstanceOfSatisfying(KvBudgetTooSmallException.class, e -> {
                    assertThat(e.budgetBytes()).isEqualTo(seq.totalBytes() - 1);
                    assertThat(e.sequenceBytes()).isEqualTo(seq.totalBytes());
                })
                .hasMessageContaining("holds no fp16 sequence").hasMessageContaining("483524608 bytes over its 32 layers");
        assertThatThrownBy(() -> KvBudget.fit("1-bit", KvBudget.bytesOfGigabytes(0.01), 32,
                BudgetFormula.sequence(true, 32, 256))).isInstanceOf(KvBudgetTooSmallException.class);
    }

    @Test
    void badSizesAreRefused() {
        MemoryUsage seq = BudgetFormula.sequence(true, 32, 256);
        assertThatThrownBy(() -> KvBudget.fit("1-bit", 0, 32, seq)).isInstanceOf(IllegalArgumentException.class)
                .isNotInstanceOf(KvBudgetTooSmallException.class).hasMessageContaining("must be positive");
        assertThatThrownBy(() -> KvBudget.fit("1-bit", -5, 32, seq)).hasMessageContaining("must be positive");
        assertThatThrownBy(() -> KvBudget.fit("1-bit", GB_100, 0, seq)).hasMessageContaining("must be positive");
        assertThatThrownBy(() -> KvBudget.fit("1-bit", GB_100, 32, MemoryUsage.ZERO))
                .hasMessageContaining("holds 0 bytes");
        assertThatThrownBy(() -> KvBudget.fit("1-bit", GB_100, 32, new MemoryUsage(1000, 0, 0, 0)))
                .hasMessageContaining("do not split evenly over its 32 layers");
        assertThatThrownBy(() -> KvBudget.fit("1-bit", Long.MAX_VALUE, 1, new MemoryUsage(1, 0, 0, 0)))
                .hasMessageContaining("more than one batch can index");
        assertThatThrownBy(() -> KvBudget.fit(null, GB_100, 32, seq)).isInstanceOf(NullPointerException.class);
        assertThatThrownBy(() -> KvBudget.fit("1-bit", GB_100, 32, null)).isInstanceOf(NullPointerException.class);
        // a Fit made by hand must agree with the arithmetic
        assertThatThrownBy(() -> new KvBudget.Fit("1-bit", GB_100, 32, seq, 1332)).hasMessageContaining("inconsistent fit");
    }

    @Test
    void gigabytesAreDecimalAndMustBePositiveAndFinite() {
        assertThat(KvBudget.bytesOfGigabytes(100)).isEqualTo(GB_100);
        assertThat(KvBudget.bytesOfGigabytes(0.3)).isEqualTo(300_000_000L); // 0.3 · 10^9 is 299,999,999.99… in binary
        assertThat(KvBudget.bytesOfGigabytes(1e-9)).isEqualTo(1);
        for (double bad : new double[] {0, -1, Double.NaN, Double.POSITIVE_INFINITY, 1e-12, 1e10}) {
            assertThatThrownBy(() -> KvBudget.bytesOfGigabytes(bad)).as("%s GB", bad)
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("GB");
        }
    }

    @Property
    void aSplitIsTheFewestEqualSubBatchesThatCoverTheBatch(@ForAll @IntRange(min = 1, max = 200_000) int n,
            @ForAll @IntRange(min = 1, max = 200_000) int max) {
        KvBudget.Split s = KvBudget.split(n, max);
        assertThat(s.subBatchSize()).isLessThanOrEqualTo(max).isLessThanOrEqualTo(n);
        assertThat((long) (s.subBatches() - 1) * max).isLessThan(n); // one fewer sub-batch could not hold them
        assertThat(s.timedSequences()).isGreaterThanOrEqualTo(n);
        assertThat(s.timedSequences() - n).isLessThan(s.subBatches());
        assertThat(s.whole()).isEqualTo(n <= max);
        if (s.subBatchSize() > 1) {
            KvBudget.Split h = s.halved();
            assertThat(h.subBatchSize()).isLessThanOrEqualTo(s.subBatchSize() / 2);
            assertThat(h.sequences()).isEqualTo(n);
        }
    }

    @Test
    void splitsRefuseBadSizes() {
        assertThat(KvBudget.split(1331, 1000)).isEqualTo(new KvBudget.Split(1331, 2, 666));
        assertThat(KvBudget.split(206, 206)).isEqualTo(new KvBudget.Split(206, 1, 206));
        assertThatThrownBy(() -> KvBudget.split(0, 5)).hasMessageContaining("must be positive");
        assertThatThrownBy(() -> KvBudget.split(5, 0)).hasMessageContaining("must be positive");
        assertThatThrownBy(() -> KvBudget.split(5, 1).halved()).isInstanceOf(IllegalStateException.class);
        assertThatThrownBy(() -> new KvBudget.Split(10, 2, 4)).hasMessageContaining("inconsistent split");
        assertThatThrownBy(() -> new KvBudget.Split(10, 2, 7)).hasMessageContaining("inconsistent split");
        assertThat(KvBudget.split(1331, 665)).isEqualTo(new KvBudget.Split(1331, 3, 444)); // 2 · 665 = 1330 < 1331
        // 2 sub-batches of 2^30 time one more sequence than int holds
        assertThat(KvBudget.split(Integer.MAX_VALUE, Integer.MAX_VALUE - 1).timedSequences()).isEqualTo(1L << 31);
        assertThat(KvBudget.split(1331, 665).layerStepUs(250)).isEqualTo(3 * 250.0);
        assertThatThrownBy(() -> KvBudget.split(4, 2).layerStepUs(0)).hasMessageContaining("positive and finite");
    }

    @Test
    void throughputIsSequencesOverAllLayersSteps() {
        KvBudget.Fit fp16 = KvBudget.fit("fp16", GB_100, 32, BudgetFormula.sequence(false, 32, 256)); // 206
        KvBudget.Fit oneBit = KvBudget.fit("1-bit", GB_100, 32, BudgetFormula.sequence(true, 32, 256)); // 1331
        // 625 µs per layer, 32 layers: 20 ms a step, 50 steps/s, exactly representable
        KvBudget.Throughput a = KvBudget.throughput(fp16, 625);
        assertThat(a.stepsPerSecond()).isEqualTo(50.0);
        assertThat(a.sequenceStepsPerSecond()).isEqualTo(206 * 50.0);
        KvBudget.Throughput b = KvBudget.throughput(oneBit, 1250);
        assertThat(b.stepsPerSecond()).isEqualTo(25.0);
        // (1331 · 25) / (206 · 50), to a few ulps of the three roundings
        assertThat(b.over(a)).isCloseTo(1331.0 / 412, org.assertj.core.data.Offset.offset(1e-12));
        for (double bad : new double[] {0, -3, Double.NaN, Double.POSITIVE_INFINITY}) {
            assertThatThrownBy(() -> KvBudget.throughput(fp16, bad)).as("%s µs", bad)
                    .hasMessageContaining("positive and finite");
        }
        assertThatThrownBy(() -> KvBudget.throughput(null, 5)).isInstanceOf(NullPointerException.class);
    }
}
