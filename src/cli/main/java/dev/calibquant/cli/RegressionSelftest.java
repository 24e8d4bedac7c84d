package dev.calibquant.cli;

import dev.calibquant.cuda.Cuda;
import dev.calibquant.cuda.CudaAvailability;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.regression.RegressionScenarios;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.kernels.KernelManifest;
import dev.calibquant.regression.Expectations;
import dev.calibquant.regression.JUnitXmlReport;
import dev.calibquant.regression.RegressionSuite;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.TreeSet;

/**
 * {@code calibquant selftest --regression}: runs every kernel variant's fixed-seed cases on this GPU and compares them
 * with the recorded expectations (shipped in the jar, or {@code --expectations FILE}); with {@code --record FILE},
 * records them instead, each case first checked against the CPU reference.
 */
final class RegressionSelftest {
    static final String NOTE = "Recorded by `calibquant selftest --regression --record`: the GPU outputs of fixed-seed "
            + "cases of every kernel variant, each case first checked against the CPU reference. Checked by "
            + "`calibquant selftest --regression` on any GPU; seeds: CaseSeeds, cases: RegressionScenarios.";

    private final int device;
    private final String target;
    private final PrintStream out;
    private final KernelCatalog.Image image;

    RegressionSelftest(int device, String target, PrintStream out) {
        this(device, target, KernelCatalog.Image.fromSystemProperty(), out);
    }

    RegressionSelftest(int device, String target, KernelCatalog.Image image, PrintStream out) {
        this.image = image;
        this.device = device;
        this.target = target;
        this.out = out;
    }

    /** Compares with {@code expectationsFile}, or the shipped expectations when it is null. */
    int compare(Path expectationsFile, Path junitXml) throws IOException {
        KernelManifest manifest = KernelManifest.loadShipped();
        Expectations expected;
        if (expectationsFile != null) {
            expected = Expectations.read(expectationsFile);
            out.println("regression: expectations from " + expectationsFile);
        } else {
            Optional<Expectations> shipped = Expectations.shipped();
            expected = shipped.orElseGet(() -> Expectations.empty(NOTE));
            out.println("regression: " + (shipped.isPresent() ? "expectations shipped in the jar ("
                    + Expectations.REPO_PATH + ")" : "no expectations are shipped; " + Expectations.RERECORD_HINT));
        }
        CudaAvailability a = Cuda.availability();
        if (!a.available()) {
            String t = target != null ? target : "best-for-device";
            return finish(List.of(nothingLoadable(manifest, t, "none", "no usable GPU: " + a.reason())), junitXml);
        }
        try (CudaContext ctx = Cuda.device(device).openContext()) {
            String t = target != null ? target : KernelCatalog.bestTarget(ctx.device().properties().computeMajor(),
                    ctx.device().properties().computeMinor()).orElse(KernelCatalog.AMPERE);
            out.printf("regression: %s, PTX target %s, %d kernel variants%n", ctx.device().name(), t,
                    manifest.kernels().size());
            RegressionSuite.Report report;
            KernelCatalog catalog;
            try {
                catalog = KernelCatalog.open(ctx, t, image);
            } catch (RuntimeException e) {
                return finish(List.of(nothingLoadable(manifest, t, ctx.device().name(), e.getMessage())), junitXml);
            }
            try (catalog) {
                report = RegressionSuite.compare(manifest, t, ctx.device().name(), expected,
                        new RegressionScenarios(catalog), r -> out.println(r.line()));
            }
            return finish(List.of(report), junitXml);
        }
    }

    /** Records every target given (default: every target of the manifest), merged into {@code file}. */
    int record(Path file, Path junitXml) throws IOException {
        KernelManifest manifest = KernelManifest.loadShipped();
        CudaAvailability a = Cuda.availability();
        if (!a.available()) {
            out.println("regression: cannot record without a usable GPU: " + a.reason());
            return SelftestCommand.EXIT_NO_GPU;
        }
        Expectations expectations = Files.exists(file) ? Expectations.read(file) : Expectations.empty(NOTE);
        List<String> targets = new ArrayList<>();
        if (target != null) {
            targets.add(target);
        } else {
            TreeSet<String> all = new TreeSet<>();
            manifest.kernels().forEach(k -> all.addAll(k.targets().keySet()));
            targets.addAll(all);
        }
        List<RegressionSuite.Report> reports = new ArrayList<>();
        boolean complete = true;
        try (CudaContext ctx = Cuda.device(device).openContext()) {
            String name = ctx.device().name();
            for (String t : targets) {
                out.printf("regression: recording %s, PTX target %s, %d kernel variants%n", name, t,
                        manifest.kernels().size());
                KernelCatalog catalog;
                try {
                    catalog = KernelCatalog.open(ctx, t, image);
                } catch (RuntimeException e) {
                    RegressionSuite.Report none = nothingLoadable(manifest, t, name, e.getMessage());
                    none.results().forEach(r -> out.println(r.line()));
                    reports.add(none);
                    complete = false;
                    continue;
                }
                try (catalog) {
                    RegressionSuite.Recording rec = RegressionSuite.record(manifest, t, name, a.driverVersionText(),
                            LocalDate.now().toString(), new RegressionScenarios(catalog), r -> out.println(r.line()));
                    expectations = expectations.withTarget(t, rec.target());
                    reports.add(rec.report());
                    complete &= rec.report().count(RegressionSuite.Status.PASS) == manifest.kernels().size();
                }
            }
        }
        expectations.write(file);
        out.println("regression: wrote " + file + (complete ? "" : " (incomplete: see the lines above)"));
        if (junitXml != null) {
            JUnitXmlReport.write(reports, junitXml);
        }
        reports.forEach(r -> out.println(r.summary()));
        return complete ? 0 : SelftestCommand.EXIT_FAILED;
    }

    private int finish(List<RegressionSuite.Report> reports, Path junitXml) throws IOException {
        if (junitXml != null) {
            JUnitXmlReport.write(reports, junitXml);
            out.println("regression: JUnit XML report " + junitXml);
        }
        reports.forEach(r -> out.println(r.summary()));
        return exitCode(reports);
    }

    /** 0 only if something ran here and every variant that could be loaded passed; 3 if nothing could run. */
    static int exitCode(List<RegressionSuite.Report> reports) {
        long loaded = reports.stream().mapToLong(r -> r.results().size() - r.count(RegressionSuite.Status.NOT_LOADABLE))
                .sum();
        if (loaded == 0) {
            return SelftestCommand.EXIT_NO_GPU;
        }
        return reports.stream().allMatch(RegressionSuite.Report::passed) ? 0 : SelftestCommand.EXIT_FAILED;
    }

    /** Every variant NOT LOADABLE for {@code why}, printed. */
    private RegressionSuite.Report nothingLoadable(KernelManifest manifest, String t, String deviceName, String why) {
        List<RegressionSuite.KernelResult> results = manifest.kernels().stream()
                .map(k -> new RegressionSuite.KernelResult(k.name(), RegressionSuite.Status.NOT_LOADABLE, Double.NaN,
                        why, 0))
                .toList();
        results.forEach(x -> out.println(x.line()));
        return new RegressionSuite.Report(t, deviceName, results);
    }
}
