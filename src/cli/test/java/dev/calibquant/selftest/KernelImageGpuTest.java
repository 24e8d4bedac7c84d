package dev.calibquant.selftest;

import dev.calibquant.regression.RegressionScenarios;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.cuda.CudaContext;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.kernels.KernelManifest;
import dev.calibquant.regression.CaseSpec;
import dev.calibquant.regression.Expectations;
import dev.calibquant.regression.Observation;
import dev.calibquant.regression.OutputComparison;
import dev.calibquant.testing.GpuFixture;
import dev.calibquant.testing.GpuTest;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

/**
 * The cubins that ship for this GPU are what the catalog loads, and they compute what their PTX computes through the
 * driver's JIT: the same regression cases through both images pass the CPU check and agree within the cases' bounds.
 */
@GpuTest
class KernelImageGpuTest {
    private static final List<String> VARIANTS = List.of("calibquant_decode_b1_d128_mm3_hs4",
            "calibquant_decode_b1_d128_mm1_hs4", "quantize_pack_b1_d128", "fp16_decode_d128", "calibquant_decode_b2_d128_mm2");

    @RegisterExtension
    final GpuFixture gpu = new GpuFixture();

    @Test
    void theCatalogLoadsShippedCubinsAndTheyAgreeWithTheirPtx() {
        KernelManifest manifest = KernelManifest.loadShipped();
        gpu.assumeComputeCapability(9, 0, "cubins ship for compute capability 9.0 (sm_90a) and 8.0 (sm_80)");
        CudaContext ctx = gpu.context();
        try (KernelCatalog cubin = KernelCatalog.open(ctx, KernelCatalog.HOPPER, KernelCatalog.Image.CUBIN_WHERE_SHIPPED);
                KernelCatalog ptx = KernelCatalog.open(ctx, KernelCatalog.HOPPER, KernelCatalog.Image.PTX)) {
            RegressionScenarios fromCubin = new RegressionScenarios(cubin);
            RegressionScenarios fromPtx = new RegressionScenarios(ptx);
            for (String name : VARIANTS) {
                assertThat(cubin.imageOf(name)).as(name).isEqualTo("cubin");
                assertThat(ptx.imageOf(name)).as(name).isEqualTo("ptx");
                KernelManifest.Kernel k = manifest.kernel(name);
                for (CaseSpec spec : fromCubin.cases(k)) {
                    Observation a = fromCubin.run(k, spec);
                    Observation b = fromPtx.run(k, spec);
                    assertThat(a.checkPassed()).as("%s case %s from cubin: %s", name, spec, a.checkFailure()).isTrue();
                    assertThat(b.checkPassed()).as("%s case %s from PTX: %s", name, spec, b.checkFailure()).isTrue();
                    assertThat(a.inputsSha256()).isEqualTo(b.inputsSha256());
                    for (int i = 0; i < a.outputs().size(); i++) {
                        OutputComparison.Verdict v = OutputComparison.compare(Expectations.Output.of(b.outputs().get(i)),
                                a.outputs().get(i));
                        assertThat(v.passed()).as("%s case %s %s: %s", name, spec, a.outputs().get(i).name(), v.detail())
                                .isTrue();
                    }
                }
            }
        }
    }
}
