package dev.calibquant.regression;

import dev.calibquant.kernels.KernelManifest;
import java.util.List;
import java.util.Optional;

/** Runs the regression cases of kernel variants on one PTX target (the GPU side implements it). */
public interface CaseRunner {

    /** The variant's cases; empty where the suite has none for it (reported as a failure, never a pass). */
    List<CaseSpec> cases(KernelManifest.Kernel kernel);

    /** Loads the variant: empty if it can run here, else why not (too old a driver, a PTX for another GPU, ...). */
    Optional<String> notLoadable(KernelManifest.Kernel kernel);

    /** Runs one case; never throws for a kernel's misbehaviour (that is a failed {@link Observation}). */
    Observation run(KernelManifest.Kernel kernel, CaseSpec spec);
}
