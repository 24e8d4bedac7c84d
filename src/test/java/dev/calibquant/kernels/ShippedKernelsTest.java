package dev.calibquant.kernels;

import static org.assertj.core.api.Assertions.assertThat;

import java.util.Set;
import org.junit.jupiter.api.Test;

/** Runs on every machine: the PTX in the repository still matches the kernel sources and the manifest. */
class ShippedKernelsTest {

    @Test
    void everyShippedPtxMatchesItsSourceAndManifest() {
        KernelManifest manifest = KernelManifest.loadShipped();
        assertThat(manifest.kernels()).as("shipped kernels").isNotEmpty();
        assertThat(ShippedKernels.problems(manifest)).as("inconsistencies in ptx/").isEmpty();
    }

    @Test
    void everyKernelIsCompiledForHopperAndAmpere() {
        for (KernelManifest.Kernel k : KernelManifest.loadShipped().kernels()) {
            assertThat(k.targets().keySet()).as(k.name()).containsAll(Set.of("sm_90a", "sm_80"));
        }
    }
}
