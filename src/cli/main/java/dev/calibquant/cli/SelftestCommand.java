package dev.calibquant.cli;

import dev.calibquant.cuda.Cuda;
import dev.calibquant.cuda.CudaAvailability;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.selftest.KernelCheck;
import dev.calibquant.selftest.KernelChecks;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.kernels.KernelManifest;
import dev.calibquant.kernels.ShippedKernels;
import java.io.IOException;
import java.nio.file.Path;
import java.util.List;
import java.util.Optional;
import java.util.Random;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code calibquant selftest}: loads every shipped kernel for this GPU and runs each once against the CPU; with
 * {@code --regression}, runs the kernel regression suite instead ({@link RegressionSelftest}).
 */
@Command(name = "selftest", mixinStandardHelpOptions = true,
        description = {"Load every shipped kernel on this GPU and check each once against the CPU reference.",
            "With --regression: run every kernel's fixed-seed cases and compare them with the recorded expectations "
                    + "(PASS / FAIL / NOT LOADABLE HERE / NO EXPECTATIONS per kernel; exit code 0 only if every "
                    + "kernel loadable here passes)."})
public final class SelftestCommand implements Callable<Integer> {
    static final int EXIT_FAILED = 1;
    static final int EXIT_NO_GPU = 3;

    @Option(names = "--device", description = "CUDA device ordinal (default ${DEFAULT-VALUE}).", defaultValue = "0")
    int device;

    @Option(names = "--target", description = "PTX target to load instead of the best one for the device, e.g. sm_80.")
    String target;

    @Option(names = "--ptx", description = "Load every kernel from its PTX (driver JIT) even where a cubin ships for "
            + "this GPU: tests the path other GPUs take.")
    boolean ptx;

    @Option(names = "--seed", description = "Random seed (default: fresh, printed).")
    Long seed;

    @Option(names = "--regression", description = "Run the kernel regression suite (fixed seeds, recorded outputs).")
    boolean regression;

    @Option(names = "--record", paramLabel = "FILE", description = "With --regression: record the expectations into "
            + "FILE (every target unless --target; other targets in FILE are kept), each case checked against the CPU.")
    Path record;

    @Option(names = "--expectations", paramLabel = "FILE", description = "With --regression: compare with FILE instead "
            + "of the expectations shipped in the jar.")
    Path expectations;

    @Option(names = "--junit-xml", paramLabel = "FILE", description = "With --regression: also write a JUnit XML report.")
    Path junitXml;

    private KernelCatalog.Image image() {
        return ptx ? KernelCatalog.Image.PTX : KernelCatalog.Image.fromSystemProperty();
    }

    @Override
    public Integer call() throws IOException {
        if (!regression && (record != null || expectations != null || junitXml != null)) {
            throw new CommandLine.ParameterException(new CommandLine(this),
                    "--record, --expectations and --junit-xml go with --regression");
        }
        if (regression && (seed != null || (record != null && expectations != null))) {
            throw new CommandLine.ParameterException(new CommandLine(this), seed != null
                    ? "--seed does not go with --regression: its cases have fixed seeds"
                    : "--record writes expectations; --expectations reads them: give one");
        }
        if (regression) {
            RegressionSelftest suite = new RegressionSelftest(device, target, image(), System.out);
            return record != null ? suite.record(record, junitXml) : suite.compare(expectations, junitXml);
        }
        CudaAvailability a = Cuda.availability();
        if (!a.available()) {
            System.err.println("selftest: no usable GPU, nothing to test: " + a.reason());
            return EXIT_NO_GPU;
        }
        long s = seed != null ? seed : new Random().nextLong();
        System.out.println("selftest: seed " + s);
        KernelManifest manifest = KernelManifest.loadShipped();
        List<String> problems = ShippedKernels.problems(manifest);
        problems.forEach(p -> System.out.println("FAIL  manifest: " + p));
        int failed = problems.size();
        try (CudaContext ctx = Cuda.device(device).openContext();
                KernelCatalog catalog = target == null ? KernelCatalog.open(ctx, image())
                        : KernelCatalog.open(ctx, target, image())) {
            System.out.printf("selftest: %s, PTX target %s, %d kernel variants%s%n", ctx.device().name(), catalog.target(),
                    manifest.kernels().size(), ptx ? ", every one JIT-compiled from its PTX" : "");
            Random random = new Random(s);
            for (KernelManifest.Kernel k : manifest.kernels()) {
                if (!k.targets().containsKey(catalog.target())) {
                    System.out.printf("FAIL  %-34s not compiled for %s%n", k.name(), catalog.target());
                    failed++;
                    continue;
                }
                long t0 = System.nanoTime();
                try {
                    catalog.kernel(k.name());
                } catch (RuntimeException e) {
                    System.out.printf("FAIL  %-34s cannot be loaded here: %s%n", k.name(), e.getMessage());
                    failed++;
                    continue;
                }
                double loadMs = (System.nanoTime() - t0) / 1e6;
                Optional<KernelCheck> check = KernelChecks.forKernel(k);
                if (check.isEmpty()) {
                    System.out.printf("FAIL  %-34s loaded in %.1f ms but has no CPU check%n", k.name(), loadMs);
                    failed++;
                    continue;
                }
                KernelCheck.Result r;
                try {
                    r = check.get().run(catalog, k, random);
                    ctx.synchronize();
                } catch (RuntimeException e) {
                    r = new KernelCheck.Result(false, Double.NaN, 0, "threw " + e);
                }
                System.out.printf("%s  %-34s load %.1f ms; max error %.3g (tolerance %.3g); %s%n",
                        r.passed() ? "PASS" : "FAIL", k.name(), loadMs, r.maxError(), r.tolerance(), r.detail());
                if (!r.passed()) {
                    failed++;
                }
            }
        }
        System.out.println(failed == 0 ? "selftest: all kernels passed" : "selftest: " + failed + " failure(s)");
        return failed == 0 ? 0 : EXIT_FAILED;
    }
}
