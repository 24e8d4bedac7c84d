package dev.calibquant.selftest;

import dev.calibquant.kernels.KernelManifest;
import java.util.List;
import java.util.Optional;

/** Every kernel check the project has; a shipped kernel without one makes {@code selftest} fail, not pass. */
public final class KernelChecks {
    private static final List<KernelCheck> ALL = List.of(new ScenarioCheck(), new QuantizePackCheck());

    private KernelChecks() {}

    public static Optional<KernelCheck> forKernel(KernelManifest.Kernel kernel) {
        return ALL.stream().filter(c -> c.handles(kernel)).findFirst();
    }
}
