package dev.calibquant.bench;

import dev.calibquant.gpu.DeviceKvCache;
import dev.calibquant.selftest.GpuScenario;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.cache.MemoryUsage;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.testing.GpuFixture;
import dev.calibquant.testing.GpuTest;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

/** The fixed-budget benchmark on the GPU: the cache's accounting against the formula, and a small run end to end. */
@GpuTest
class BudgetBenchmarkGpuTest {
    @RegisterExtension
    final GpuFixture gpu = new GpuFixture();

    @Test
    void theCachesAccountingOfASequenceIsTheFormula() {
        int odd = 1 + 2 * gpu.random().nextInt(150); // an odd count: rows no multiple of the 64-element alignment
        for (int generated : new int[] {0, 256, odd}) {
            for (boolean oneBit : new boolean[] {false, true}) {
                QuantConfig config = oneBit ? QuantConfig.defaults(1) : null;
                MemoryUsage usage = BudgetBenchmark.sequenceUsage(gpu.context(), config, 32, generated);
                assertThat(usage).as("seed %d, %d generated, %s", gpu.seed(), generated, oneBit ? "1-bit" : "fp16")
                        .isEqualTo(BudgetFormula.sequence(oneBit, 32, generated));
            }
        }
    }

    /** What the device storage hands out for a sequence is what its usage says, up to the 64-byte block rounding. */
    @Test
    void theAccountingIsWhatTheStorageHandsOut() {
        int generated = 1 + gpu.random().nextInt(300);
        ModelGeometry g = new ModelGeometry(3, 32, 8, 128);
        try (Arena arena = Arena.ofConfined(); DeviceKvCache cache = DeviceKvCache.open(gpu.context(), g, 1L << 28);
                Sequence s = cache.manager().createSequence(3433, List.of(new TokenSpan(41, 3369)),
                        QuantConfig.defaults(1), generated)) {
            MemorySegment k = GpuScenario.fp16(arena, GpuScenario.normal(gpu.random(), 8, 3433, 128, 4));
            for (int l = 0; l < 3; l++) {
                s.fill(l, k, k, DType.FP16);
            }
            long handedOut = cache.usedDeviceBytes();
            long blocks = 3 * 4; // per layer: the full-precision pair and the span's pair
            assertThat(s.usage().totalBytes()).as("seed %d, %d generated", gpu.seed(), generated)
                    .isLessThanOrEqualTo(handedOut).isGreaterThan(handedOut - 64 * blocks);
            assertThat(s.usage()).isEqualTo(BudgetFormula.sequence(true, 3, generated));
        }
    }

    @Test
    void aSmallBudgetRunsEndToEndWithSubBatches() {
        // 2 layers, 6 generated tokens (3 held when timed); the budget holds 3 fp16 sequences and
        // ⌊budget / 1-bit sequence⌋ 1-bit ones, timed in sub-batches of at most 8
        long fp16Bytes = BudgetFormula.sequence(false, 2, 6).totalBytes();
        long oneBitBytes = BudgetFormula.sequence(true, 2, 6).totalBytes();
        long budget = 3 * fp16Bytes + gpu.random().nextLong(fp16Bytes);
        int oneBitSequences = (int) (budget / oneBitBytes);
        BudgetBenchmark.Report r = BudgetBenchmark.run(gpu.context(), budget, 2, 6, 8, 3, 2);
        String as = "seed " + gpu.seed() + ", budget " + budget;
        assertThat(r.heldGeneratedTokens()).isEqualTo(3);
        assertThat(r.fp16().fit().sequences()).as(as).isEqualTo(3);
        assertThat(r.fp16().split().whole()).as(as).isTrue();
        assertThat(r.oneBit().fit().sequences()).as(as).isEqualTo(oneBitSequences);
        assertThat(r.oneBit().split()).as(as).isEqualTo(KvBudget.split(oneBitSequences, 8));
        assertThat(r.oneBit().split().whole()).as(as).isFalse();
        assertThat(r.oneBit().splitReason()).contains("at most 8");
        assertThat(r.twoBit().fit().sequences()).as(as).isBetween(3, oneBitSequences);
        for (BudgetBenchmark.PathFigures p : r.paths()) {
            assertThat(p.subBatchStepUs()).as(as).isPositive().isFinite();
            assertThat(p.layerStepUs()).isEqualTo(p.split().subBatches() * p.subBatchStepUs());
            assertThat(p.workItems()).as(as).isPositive();
            assertThat(p.throughput().sequenceStepsPerSecond()).as(as).isPositive().isFinite();
        }
        assertThat(r.oneBit().calibrationMode()).as(as).isIn(1, 2, 3); // the defaults calibrate
        assertThat(r.throughputRatio()).as(as).isPositive().isFinite();
    }

    @Test
    void aBudgetBelowOneSequenceIsRefusedBeforeAnythingIsTimed() {
        long fp16Bytes = BudgetFormula.sequence(false, 32, 256).totalBytes();
        assertThatThrownBy(() -> BudgetBenchmark.run(gpu.context(), fp16Bytes - 1, 32, 256, 0, 3, 2))
                .isInstanceOf(KvBudgetTooSmallException.class).hasMessageContaining("holds no fp16 sequence");
        assertThatThrownBy(() -> BudgetBenchmark.run(gpu.context(), fp16Bytes, 32, -1, 0, 3, 2))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("-1 generated tokens");
    }
}
