package dev.calibquant.regression;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.kernels.KernelManifest;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Random;
import java.util.function.BiFunction;
import org.junit.jupiter.api.Test;

/** The suite's bookkeeping over the real manifest, with a runner that makes outputs up from each case's seed. */
class RegressionSuiteTest {
    private static final KernelManifest MANIFEST = KernelManifest.loadShipped();
    private static final String TARGET = "sm_90a";

    /** Deterministic outputs per case; tests override pieces of its behaviour. */
    private static class FakeRunner implements CaseRunner {
        final Map<String, String> unloadable = new HashMap<>();
        BiFunction<KernelManifest.Kernel, CaseSpec, Observation> override = (k, c) -> null;
        int runs;

        @Override
        public List<CaseSpec> cases(KernelManifest.Kernel kernel) {
            return List.of(new CaseSpec(0, CaseSeeds.seed(kernel.name(), 0), "small"),
                    new CaseSpec(1, CaseSeeds.seed(kernel.name(), 1), "odd"));
        }

        @Override
        public Optional<String> notLoadable(KernelManifest.Kernel kernel) {
            return Optional.ofNullable(unloadable.get(kernel.name()));
        }

        @Override
        public Observation run(KernelManifest.Kernel kernel, CaseSpec spec) {
            runs++;
            Observation o = override.apply(kernel, spec);
            return o != null ? o : observation(spec.seed(), "cache");
        }
    }

    static Observation observation(long seed, String cache) {
        Random r = new Random(seed);
        return new Observation(true, null, Long.toHexString(seed), cache, 4, 1, List.of(
                Fixtures.output("attention", OutputKind.ATTENTION, 200, 1e-4, r),
                Fixtures.output("codes", OutputKind.CODES, 64, 0, r)));
    }

    private static Expectations recorded(FakeRunner runner) {
        RegressionSuite.Recording rec = RegressionSuite.record(MANIFEST, TARGET, "Test GPU", "13.0", "2026-11-29",
                runner, r -> {});
        assertThat(rec.report().count(RegressionSuite.Status.PASS)).isEqualTo(MANIFEST.kernels().size());
        return Expectations.empty("test").withTarget(TARGET, rec.target());
    }

    private static RegressionSuite.Report compare(Expectations e, CaseRunner runner) {
        List<RegressionSuite.KernelResult> printed = new ArrayList<>();
        RegressionSuite.Report report = RegressionSuite.compare(MANIFEST, TARGET, "Test GPU", e, runner, printed::add);
        assertThat(printed).isEqualTo(report.results());
        return report;
    }

    private static RegressionSuite.KernelResult first(RegressionSuite.Report r, RegressionSuite.Status s) {
        return r.results().stream().filter(x -> x.status() == s).findFirst().orElseThrow();
    }

    @Test
    void aRecordingComparedWithItsOwnRunsPassesEveryKernel() {
        FakeRunner runner = new FakeRunner();
        Expectations e = recorded(runner);
        assertThat(e.targets().get(TARGET).kernels()).hasSize(MANIFEST.kernels().size());
        RegressionSuite.Report report = compare(e, runner);
        assertThat(report.results()).allMatch(r -> r.status() == RegressionSuite.Status.PASS);
        assertThat(report.results().getFirst().detail()).contains("2 cases");
        assertThat(report.passed()).isTrue();
        assertThat(report.summary()).contains(MANIFEST.kernels().size() + " passed");
    }

    @Test
    void aTargetThatIsNotShippedIsNotLoadableForEveryKernel() {
        FakeRunner runner = new FakeRunner();
        RegressionSuite.Report report = RegressionSuite.compare(MANIFEST, "sm_100", "Test GPU", recorded(runner),
                runner, r -> {});
        assertThat(report.results()).allSatisfy(r -> {
            assertThat(r.status()).isEqualTo(RegressionSuite.Status.NOT_LOADABLE);
            assertThat(r.detail()).isEqualTo("no sm_100 PTX is shipped for it");
        });
        assertThat(report.passed()).isTrue();
        assertThat(runner.runs).isEqualTo(2 * MANIFEST.kernels().size()); // the recording only
    }

    @Test
    void aKernelThatCannotLoadIsReportedWithItsReasonAndTheRestStillRun() {
        FakeRunner runner = new FakeRunner();
        Expectations e = recorded(runner);
        String name = MANIFEST.kernels().get(3).name();
        runner.unloadable.put(name, "sm_90a PTX loads only on compute capability 9.0");
        RegressionSuite.Report report = compare(e, runner);
        RegressionSuite.KernelResult r = first(report, RegressionSuite.Status.NOT_LOADABLE);
        assertThat(r.kernel()).isEqualTo(name);
        assertThat(r.line()).startsWith("NOT LOADABLE HERE").contains("compute capability 9.0");
        assertThat(report.count(RegressionSuite.Status.PASS)).isEqualTo(MANIFEST.kernels().size() - 1);
        assertThat(report.passed()).isTrue();
    }

    @Test
    void withoutARecordingEveryKernelHasNoExpectationsAndSaysHowToRecord() {
        RegressionSuite.Report report = compare(Expectations.empty("none"), new FakeRunner());
        assertThat(report.results()).allSatisfy(r -> {
            assertThat(r.status()).isEqualTo(RegressionSuite.Status.NO_EXPECTATIONS);
            assertThat(r.detail()).contains("--regression --record ptx/regression/expectations.json");
        });
        assertThat(report.passed()).isFalse();
    }

    @Test
    void anOutputBeyondItsBoundFailsNamingTheCaseAndTheElement() {
        FakeRunner runner = new FakeRunner();
        Expectations e = recorded(runner);
        String name = MANIFEST.kernels().get(7).name();
        long seed = CaseSeeds.seed(name, 0);
        Observation good = observation(seed, "cache");
        ObservedOutput attention = good.outputs().getFirst();
        int i = Expectations.sampleIndices(attention.count())[4];
        Observation bad = new Observation(true, null, good.inputsSha256(), "cache", 4, 1,
                List.of(Fixtures.moved(attention, i, 5e-4), good.outputs().get(1)));
        runner.override = (k, c) -> k.name().equals(name) && c.index() == 0 ? bad : null;
        RegressionSuite.Report report = compare(e, runner);
        RegressionSuite.KernelResult r = first(report, RegressionSuite.Status.FAIL);
        assertThat(r.kernel()).isEqualTo(name);
        assertThat(r.detail()).contains("case 0 (small, seed " + seed + ")").contains("attention[" + i + "]");
        assertThat(r.worstRatio()).isGreaterThan(2);
        assertThat(report.passed()).isFalse();
    }

    @Test
    void whenTheCacheContentsDifferAttentionIsHeldToTheCpuCheckOnly() {
        FakeRunner runner = new FakeRunner();
        Expectations e = recorded(runner);
        String name = MANIFEST.kernels().get(7).name();
        Observation good = observation(CaseSeeds.seed(name, 0), "cache");
        ObservedOutput attention = good.outputs().getFirst();
        Observation otherCache = new Observation(true, null, good.inputsSha256(), "another cache", 4, 1,
                List.of(Fixtures.moved(attention, 0, 5e-4), good.outputs().get(1)));
        runner.override = (k, c) -> k.name().equals(name) && c.index() == 0 ? otherCache : null;
        RegressionSuite.KernelResult r = compare(e, runner).results().stream()
                .filter(x -> x.kernel().equals(name)).findFirst().orElseThrow();
        assertThat(r.status()).isEqualTo(RegressionSuite.Status.PASS);
        assertThat(r.detail()).contains("CPU reference only");
    }

    @Test
    void aCaseThatFailsTheCpuCheckFailsAndIsNeverRecorded() {
        FakeRunner runner = new FakeRunner();
        Expectations good = recorded(runner);
        String name = MANIFEST.kernels().get(2).name();
        runner.override = (k, c) -> k.name().equals(name) && c.index() == 1
                ? Observation.failed("out[0][1][2] GPU NaN CPU 0.5") : null;
        RegressionSuite.KernelResult r = first(compare(good, runner), RegressionSuite.Status.FAIL);
        assertThat(r.kernel()).isEqualTo(name);
        assertThat(r.detail()).contains("case 1").contains("fails the CPU check").contains("GPU NaN");

        RegressionSuite.Recording rec = RegressionSuite.record(MANIFEST, TARGET, "Test GPU", "13.0", "2026-11-29",
                runner, x -> {});
        assertThat(rec.target().kernels()).doesNotContainKey(name).hasSize(MANIFEST.kernels().size() - 1);
        assertThat(first(rec.report(), RegressionSuite.Status.FAIL).detail()).contains("not recorded")
                .contains("GPU NaN");
        RegressionSuite.KernelResult after = compare(Expectations.empty("x").withTarget(TARGET, rec.target()), runner)
                .results().get(2);
        assertThat(after.status()).isEqualTo(RegressionSuite.Status.NO_EXPECTATIONS);
    }

    @Test
    void aRecordingOfAnotherPtxOrOtherInputsIsStale() {
        FakeRunner runner = new FakeRunner();
        Expectations e = recorded(runner);
        Map<String, Expectations.Kernel> kernels = new HashMap<>(e.targets().get(TARGET).kernels());
        String first = MANIFEST.kernels().get(0).name();
        String second = MANIFEST.kernels().get(1).name();
        kernels.put(first, new Expectations.Kernel("00".repeat(32), kernels.get(first).cases()));
        Expectations.Kernel k2 = kernels.get(second);
        Expectations.Case c0 = k2.cases().getFirst();
        kernels.put(second, new Expectations.Kernel(k2.ptxSha256(), List.of(new Expectations.Case(c0.index(), c0.seed(),
                c0.shape(), "ff".repeat(32), c0.cacheSha256(), c0.workItems(), c0.calibrationMode(), c0.outputs()),
                k2.cases().get(1))));
        Expectations.Target t = e.targets().get(TARGET);
        Expectations stale = e.withTarget(TARGET, new Expectations.Target(t.device(), t.driver(), t.recordedOn(),
                t.tritonVersion(), kernels));
        RegressionSuite.Report report = compare(stale, runner);
        assertThat(report.results().get(0).status()).isEqualTo(RegressionSuite.Status.NO_EXPECTATIONS);
        assertThat(report.results().get(0).detail()).contains("recorded from another PTX");
        assertThat(report.results().get(1).status()).isEqualTo(RegressionSuite.Status.NO_EXPECTATIONS);
        assertThat(report.results().get(1).detail()).contains("inputs are not the recorded ones");
        assertThat(report.count(RegressionSuite.Status.PASS)).isEqualTo(MANIFEST.kernels().size() - 2);
    }

    @Test
    void aKernelWithoutCasesFailsInsteadOfPassing() {
        FakeRunner runner = new FakeRunner();
        Expectations e = recorded(runner);
        String name = MANIFEST.kernels().get(5).name();
        CaseRunner noCases = new FakeRunner() {
            @Override
            public List<CaseSpec> cases(KernelManifest.Kernel kernel) {
                return kernel.name().equals(name) ? List.of() : super.cases(kernel);
            }
        };
        RegressionSuite.KernelResult r = first(compare(e, noCases), RegressionSuite.Status.FAIL);
        assertThat(r.kernel()).isEqualTo(name);
        assertThat(r.detail()).contains("no cases");
    }
}
