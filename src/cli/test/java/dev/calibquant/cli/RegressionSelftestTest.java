package dev.calibquant.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import dev.calibquant.cuda.Cuda;
import dev.calibquant.regression.RegressionSuite;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class RegressionSelftestTest {

    private static RegressionSuite.Report report(RegressionSuite.Status... statuses) {
        List<RegressionSuite.KernelResult> r = new java.util.ArrayList<>();
        for (int i = 0; i < statuses.length; i++) {
            r.add(new RegressionSuite.KernelResult("k" + i, statuses[i], 0, "", 0));
        }
        return new RegressionSuite.Report("sm_90a", "GPU", r);
    }

    @Test
    void theExitCodeIsZeroOnlyWhenSomethingRanAndEveryLoadableKernelPassed() {
        var pass = RegressionSuite.Status.PASS;
        var skip = RegressionSuite.Status.NOT_LOADABLE;
        assertThat(RegressionSelftest.exitCode(List.of(report(pass, skip, pass)))).isZero();
        assertThat(RegressionSelftest.exitCode(List.of(report(pass, RegressionSuite.Status.FAIL))))
                .isEqualTo(SelftestCommand.EXIT_FAILED);
        assertThat(RegressionSelftest.exitCode(List.of(report(pass, RegressionSuite.Status.NO_EXPECTATIONS))))
                .isEqualTo(SelftestCommand.EXIT_FAILED);
        assertThat(RegressionSelftest.exitCode(List.of(report(skip, skip)))).isEqualTo(SelftestCommand.EXIT_NO_GPU);
    }

    @Test
    void withoutAGpuEveryKernelIsNotLoadableWithTheReasonAndTheReportSaysSo(@TempDir Path dir) throws Exception {
        assumeFalse(Cuda.isAvailable(), "a GPU is here: the suite would run");
        Path xml = dir.resolve("regression.xml");
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        int rc = new RegressionSelftest(0, null, new PrintStream(bytes, true, StandardCharsets.UTF_8))
                .compare(null, xml);
        String out = bytes.toString(StandardCharsets.UTF_8);
        assertThat(rc).isEqualTo(SelftestCommand.EXIT_NO_GPU);
        assertThat(out).contains("NOT LOADABLE HERE").contains(Cuda.availability().reason());
        assertThat(Files.readString(xml)).contains("<skipped message=\"not loadable here: no usable GPU");
    }

    @Test
    void recordingNeedsAGpu(@TempDir Path dir) throws Exception {
        assumeFalse(Cuda.isAvailable(), "a GPU is here: it would record");
        Path file = dir.resolve("e.json");
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        int rc = new RegressionSelftest(0, null, new PrintStream(bytes, true, StandardCharsets.UTF_8)).record(file, null);
        assertThat(rc).isEqualTo(SelftestCommand.EXIT_NO_GPU);
        assertThat(file).doesNotExist();
    }
}
