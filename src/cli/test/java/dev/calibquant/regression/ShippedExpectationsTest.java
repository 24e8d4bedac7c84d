package dev.calibquant.regression;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.fail;

import dev.calibquant.regression.RegressionScenarios;
import dev.calibquant.kernels.KernelManifest;
import java.util.List;
import java.util.Optional;
import org.junit.jupiter.api.Test;

/**
 * Runs on every machine: the regression expectations shipped in {@code ptx/regression/expectations.json} cover every
 * kernel variant and target of the manifest, were recorded from the PTX now in {@code ptx/}, and for the cases the
 * suite runs now. It fails until they are recorded on a GPU (and again after any PTX or case change).
 */
class ShippedExpectationsTest {
    private static final KernelManifest MANIFEST = KernelManifest.loadShipped();

    @Test
    void everyShippedKernelHasRegressionCasesWithDistinctSeeds() {
        for (KernelManifest.Kernel k : MANIFEST.kernels()) {
            List<CaseSpec> cases = RegressionScenarios.casesFor(MANIFEST, k);
            assertThat(cases).as("regression cases of %s (%s %s)", k.name(), k.function(), k.constexprs()).isNotEmpty();
            assertThat(cases.stream().map(CaseSpec::seed).distinct().count()).isEqualTo(cases.size());
            for (int i = 0; i < cases.size(); i++) {
                assertThat(cases.get(i).index()).isEqualTo(i);
                assertThat(cases.get(i).seed()).isEqualTo(CaseSeeds.seed(k.name(), i));
            }
        }
    }

    @Test
    void theRecordedExpectationsCoverEveryKernelAndTargetAndMatchTheShippedPtx() {
        Optional<Expectations> shipped = Expectations.shipped();
        if (shipped.isEmpty()) {
            fail("there are no kernel regression expectations (" + Expectations.REPO_PATH + " is missing); "
                    + Expectations.RERECORD_HINT);
        }
        List<String> problems = shipped.get().problems(MANIFEST, k -> RegressionScenarios.casesFor(MANIFEST, k));
        assertThat(problems).as("regression expectations out of date; " + Expectations.RERECORD_HINT).isEmpty();
    }
}
