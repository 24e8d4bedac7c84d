package dev.calibquant.selftest;

import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.kernels.KernelManifest;
import java.util.Random;

/**
 * Runs one shipped kernel variant once on fresh random inputs (outputs poisoned first) and compares it with the CPU
 * reference. Used by {@code calibquant selftest} and by the GPU tests.
 */
public interface KernelCheck {

    /** Whether this check knows how to exercise {@code kernel}. */
    boolean handles(KernelManifest.Kernel kernel);

    Result run(KernelCatalog catalog, KernelManifest.Kernel kernel, Random random);

    /**
     * @param maxError the largest deviation found, in the unit the check names in {@code detail}
     * @param tolerance the bound derived from the arithmetic that {@code maxError} must not exceed
     */
    record Result(boolean passed, double maxError, double tolerance, String detail) {}
}
