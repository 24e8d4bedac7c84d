package dev.calibquant.regression;

import dev.calibquant.kernels.KernelManifest;
import dev.calibquant.kernels.ShippedKernels;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.function.Consumer;

/**
 * The kernel regression suite over one PTX target: for every variant in the manifest, either compares its cases'
 * outputs with the recorded ones ({@link #compare}) or records them after they passed the CPU check
 * ({@link #record}). Every variant ends as PASS, FAIL, NOT LOADABLE (with the reason) or NO EXPECTATIONS.
 */
public final class RegressionSuite {

    public enum Status {
        PASS("PASS"), FAIL("FAIL"), NOT_LOADABLE("NOT LOADABLE HERE"), NO_EXPECTATIONS("NO EXPECTATIONS");

        private final String label;

        Status(String label) {
            this.label = label;
        }

        public String label() {
            return label;
        }
    }

    /** One variant's outcome; {@code worstRatio} is its largest error as a fraction of the bound (NaN if none). */
    public record KernelResult(String kernel, Status status, double worstRatio, String detail, double seconds) {
        public String line() {
            return String.format(Locale.ROOT, "%-17s %-34s %s", status.label(), kernel, detail);
        }
    }

    /** Every variant's outcome on one target. */
    public record Report(String target, String device, List<KernelResult> results) {
        public Report {
            results = List.copyOf(results);
        }

        public long count(Status s) {
            return results.stream().filter(r -> r.status() == s).count();
        }

        /** Every variant that could be loaded here passed. */
        public boolean passed() {
            return results.stream().allMatch(r -> r.status() == Status.PASS || r.status() == Status.NOT_LOADABLE);
        }

        public String summary() {
            return String.format(Locale.ROOT, "regression [%s]: %d passed, %d failed, %d not loadable here, %d without "
                    + "expectations", target, count(Status.PASS), count(Status.FAIL), count(Status.NOT_LOADABLE),
                    count(Status.NO_EXPECTATIONS));
        }
    }

    /** A recording of one target, with the outcome of each variant (PASS: recorded). */
    public record Recording(Expectations.Target target, Report report) {}

    private RegressionSuite() {}

    /** Runs every variant's cases on {@code target} and compares them with {@code expected}. */
    public static Report compare(KernelManifest manifest, String target, String device, Expectations expected,
            CaseRunner runner, Consumer<KernelResult> progress) {
        List<KernelResult> results = new ArrayList<>();
        for (KernelManifest.Kernel k : manifest.kernels()) {
            long t0 = System.nanoTime();
            KernelResult r = compareOne(k, target, expected, runner);
            r = new KernelResult(r.kernel(), r.status(), r.worstRatio(), r.detail(), (System.nanoTime() - t0) / 1e9);
            progress.accept(r);
            results.add(r);
        }
        return new Report(target, device, results);
    }

    private static KernelResult compareOne(KernelManifest.Kernel k, String target, Expectations expected,
            CaseRunner runner) {
        Optional<String> unavailable = loadable(k, target, runner);
        if (unavailable.isPresent()) {
            return result(k, Status.NOT_LOADABLE, Double.NaN, unavailable.get());
        }
        List<CaseSpec> specs = runner.cases(k);
        if (specs.isEmpty()) {
            return result(k, Status.FAIL, Double.NaN, "the regression suite has no cases for " + k.function()
                    + " " + k.constexprs());
        }
        Optional<Expectations.Kernel> recorded = expected.kernel(target, k.name());
        if (recorded.isEmpty()) {
            return result(k, Status.NO_EXPECTATIONS, Double.NaN, "none recorded for " + target + "; "
                    + Expectations.RERECORD_HINT);
        }
        String ptxHash = ShippedKernels.sha256(ShippedKernels.readBytes(k.targets().get(target).ptx()));
        if (!recorded.get().ptxSha256().equals(ptxHash)) {
            return result(k, Status.NO_EXPECTATIONS, Double.NaN, "recorded from another PTX (sha256 "
                    + abbreviate(recorded.get().ptxSha256()) + ", shipped " + abbreviate(ptxHash) + "); "
                    + Expectations.RERECORD_HINT);
        }
        double worst = 0;
        List<String> notes = new ArrayList<>();
        for (CaseSpec spec : specs) {
            Optional<Expectations.Case> rc = recorded.get().cases().stream()
                    .filter(c -> c.index() == spec.index() && c.seed() == spec.seed() && c.shape().equals(spec.shape()))
                    .findFirst();
            if (rc.isEmpty()) {
                return result(k, Status.NO_EXPECTATIONS, Double.NaN, "case " + spec.index() + " (" + spec.shape()
                        + ", seed " + spec.seed() + ") was not recorded; " + Expectations.RERECORD_HINT);
            }
            Observation now = runner.run(k, spec);
            CaseVerdict v = compareCase(rc.get(), now);
            if (v.status() != Status.PASS) {
                return result(k, v.status(), v.ratio(), "case " + spec.index() + " (" + spec.shape() + ", seed "
                        + spec.seed() + "): " + v.detail());
            }
            worst = Math.max(worst, v.ratio());
            if (!v.detail().isEmpty()) {
                notes.add("case " + spec.index() + ": " + v.detail());
            }
        }
        return result(k, Status.PASS, worst, String.format(Locale.ROOT, "%d cases; largest difference %.3g of its "
                + "bound", specs.size(), worst) + (notes.isEmpty() ? "" : "; " + String.join("; ", notes)));
    }

    private record CaseVerdict(Status status, double ratio, String detail) {}

    /** One case against its recording. */
    static CaseVerdict compareCase(Expectations.Case recorded, Observation now) {
        if (!now.checkPassed()) {
            return new CaseVerdict(Status.FAIL, Double.POSITIVE_INFINITY, "fails the CPU check: " + now.checkFailure());
        }
        if (!recorded.inputsSha256().equals(now.inputsSha256())) {
            return new CaseVerdict(Status.NO_EXPECTATIONS, Double.NaN, "its inputs are not the recorded ones (the "
                    + "scenario code changed since recording); " + Expectations.RERECORD_HINT);
        }
        boolean sameCache = recorded.cacheSha256() == null || recorded.cacheSha256().equals(now.cacheSha256());
        double worst = 0;
        String note = "";
        for (ObservedOutput o : now.outputs()) {
            Optional<Expectations.Output> ro = recorded.output(o.name());
            if (ro.isEmpty()) {
                return new CaseVerdict(Status.NO_EXPECTATIONS, Double.NaN, "output " + o.name() + " was not recorded; "
                        + Expectations.RERECORD_HINT);
            }
            if (o.kind() == OutputKind.ATTENTION && !sameCache) {
                note = "cache contents differ from the recorded run (quantizer rounding ties), attention held to the "
                        + "CPU reference only";
                continue;
            }
            OutputComparison.Verdict v = OutputComparison.compare(ro.get(), o);
            if (!v.passed()) {
                return new CaseVerdict(Status.FAIL, v.worstRatio(), v.detail());
            }
            worst = Math.max(worst, v.worstRatio());
        }
        if (recorded.outputs().size() != now.outputs().size()) {
            return new CaseVerdict(Status.NO_EXPECTATIONS, Double.NaN, "recorded outputs "
                    + recorded.outputs().stream().map(Expectations.Output::name).toList() + " are not the outputs now "
                    + now.outputs().stream().map(ObservedOutput::name).toList() + "; " + Expectations.RERECORD_HINT);
        }
        return new CaseVerdict(Status.PASS, worst, note);
    }

    /**
     * Runs every variant's cases on {@code target} and records those whose every case passes the CPU check; a
     * variant with a failing case is left out (it then has no expectations) and reported as FAIL.
     */
    public static Recording record(KernelManifest manifest, String target, String device, String driver,
            String date, CaseRunner runner, Consumer<KernelResult> progress) {
        Map<String, Expectations.Kernel> kernels = new LinkedHashMap<>();
        List<KernelResult> results = new ArrayList<>();
        for (KernelManifest.Kernel k : manifest.kernels()) {
            long t0 = System.nanoTime();
            KernelResult r = recordOne(k, target, runner, kernels);
            r = new KernelResult(r.kernel(), r.status(), r.worstRatio(), r.detail(), (System.nanoTime() - t0) / 1e9);
            progress.accept(r);
            results.add(r);
        }
        return new Recording(new Expectations.Target(device, driver, date, manifest.tritonVersion(), kernels),
                new Report(target, device, results));
    }

    private static KernelResult recordOne(KernelManifest.Kernel k, String target, CaseRunner runner,
            Map<String, Expectations.Kernel> into) {
        Optional<String> unavailable = loadable(k, target, runner);
        if (unavailable.isPresent()) {
            return result(k, Status.NOT_LOADABLE, Double.NaN, "not recorded: " + unavailable.get());
        }
        List<CaseSpec> specs = runner.cases(k);
        if (specs.isEmpty()) {
            return result(k, Status.FAIL, Double.NaN, "not recorded: the regression suite has no cases for "
                    + k.function() + " " + k.constexprs());
        }
        List<Expectations.Case> cases = new ArrayList<>();
        for (CaseSpec spec : specs) {
            Observation o = runner.run(k, spec);
            if (!o.checkPassed()) {
                return result(k, Status.FAIL, Double.NaN, "not recorded: case " + spec.index() + " (" + spec.shape()
                        + ") fails the CPU check: " + o.checkFailure());
            }
            cases.add(new Expectations.Case(spec.index(), spec.seed(), spec.shape(), o.inputsSha256(), o.cacheSha256(),
                    o.workItems(), o.calibrationMode(), o.outputs().stream().map(Expectations.Output::of).toList()));
        }
        String ptxHash = ShippedKernels.sha256(ShippedKernels.readBytes(k.targets().get(target).ptx()));
        into.put(k.name(), new Expectations.Kernel(ptxHash, cases));
        return result(k, Status.PASS, 0, "recorded " + cases.size() + " cases (each passed the CPU check)");
    }

    private static Optional<String> loadable(KernelManifest.Kernel k, String target, CaseRunner runner) {
        if (!k.targets().containsKey(target)) {
            return Optional.of("no " + target + " PTX is shipped for it");
        }
        return runner.notLoadable(k);
    }

    private static KernelResult result(KernelManifest.Kernel k, Status s, double ratio, String detail) {
        return new KernelResult(k.name(), s, ratio, detail, 0);
    }

    private static String abbreviate(String sha) {
        return sha.length() > 12 ? sha.substring(0, 12) + "…" : sha;
    }
}
