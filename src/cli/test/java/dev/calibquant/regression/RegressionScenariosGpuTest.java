package dev.calibquant.regression;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.cuda.CudaContext;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.kernels.KernelManifest;
import dev.calibquant.regression.CaseSpec;
import dev.calibquant.regression.Expectations;
import dev.calibquant.regression.Observation;
import dev.calibquant.regression.ObservedOutput;
import dev.calibquant.regression.OutputComparison;
import dev.calibquant.regression.RegressionSuite;
import dev.calibquant.testing.GpuFixture;
import dev.calibquant.testing.GpuTest;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The regression cases on the GPU, independent of the recorded file: one variant of each kernel function (and head
 * slot count) runs every case twice; each run passes the CPU check, and the second is within the derived bounds of
 * the first (recorded).
 */
@GpuTest
class RegressionScenariosGpuTest {
    @RegisterExtension
    final GpuFixture gpu = new GpuFixture();

    @ParameterizedTest
    @ValueSource(strings = {KernelCatalog.HOPPER, KernelCatalog.AMPERE})
    void eachFunctionsCasesPassTheCpuCheckAndRepeatWithinTheirBounds(String target) {
        if (target.equals(KernelCatalog.HOPPER)) {
            gpu.assumeComputeCapability(9, 0, "sm_90a PTX loads only on compute capability 9.0");
        }
        KernelManifest manifest = KernelManifest.loadShipped();
        Map<String, KernelManifest.Kernel> oneEach = new LinkedHashMap<>();
        // one variant per function, head-slot count and 8-bit quantize (each runs a differently built case)
        manifest.kernels().forEach(k -> oneEach.putIfAbsent(k.function() + "/" + k.constexprs().get("HS")
                + (k.constexprs().get("BITS") instanceof Number n && n.intValue() == 8 ? "/8" : ""), k));
        CudaContext ctx = gpu.context();
        try (KernelCatalog catalog = KernelCatalog.open(ctx, target)) {
            RegressionScenarios runner = new RegressionScenarios(catalog);
            for (KernelManifest.Kernel k : oneEach.values()) {
                assertThat(runner.notLoadable(k)).as(k.name()).isEmpty();
                for (CaseSpec spec : runner.cases(k)) {
                    Observation first = runner.run(k, spec);
                    assertThat(first.checkPassed()).as("%s case %s: %s", k.name(), spec, first.checkFailure()).isTrue();
                    Observation second = runner.run(k, spec);
                    assertThat(second.inputsSha256()).isEqualTo(first.inputsSha256());
                    for (int i = 0; i < first.outputs().size(); i++) {
                        ObservedOutput o = second.outputs().get(i);
                        OutputComparison.Verdict v = OutputComparison.compare(Expectations.Output.of(first.outputs().get(i)), o);
                        assertThat(v.passed()).as("%s case %s %s: %s", k.name(), spec, o.name(), v.detail()).isTrue();
                    }
                }
            }
            RegressionSuite.Recording rec = RegressionSuite.record(new KernelManifest(manifest.tritonVersion(),
                    List.copyOf(oneEach.values())), target, ctx.device().name(), "test", "today", runner, r -> {});
            assertThat(rec.report().passed()).as(rec.report().summary()).isTrue();
        }
    }
}
