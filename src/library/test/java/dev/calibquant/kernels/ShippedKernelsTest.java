package dev.calibquant.kernels;

import static org.assertj.core.api.Assertions.assertThat;

import java.util.List;
import java.util.Map;
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

    /** Each target ships an ELF cubin for exactly its own compute capability; other GPUs must fall back to PTX. */
    @Test
    void everyTargetShipsACubinForExactlyItsOwnComputeCapability() {
        for (KernelManifest.Kernel k : KernelManifest.loadShipped().kernels()) {
            KernelManifest.Target hopper = k.targets().get("sm_90a");
            KernelManifest.Target ampere = k.targets().get("sm_80");
            for (KernelManifest.Target t : List.of(hopper, ampere)) {
                assertThat(t.cubin()).as(k.name()).isNotNull().endsWith(".cubin");
                byte[] elf = ShippedKernels.readBytes(t.cubin());
                assertThat(elf).as(k.name() + " ELF magic").startsWith(0x7f, 'E', 'L', 'F');
            }
            assertThat(hopper.hasCubinFor(9, 0)).as(k.name()).isTrue();
            assertThat(hopper.hasCubinFor(10, 0)).as(k.name() + " on Blackwell: PTX").isFalse();
            assertThat(ampere.hasCubinFor(8, 0)).as(k.name()).isTrue();
            assertThat(ampere.hasCubinFor(8, 6)).as(k.name() + " on an RTX 30xx: PTX").isFalse();
            assertThat(ampere.hasCubinFor(9, 0)).as(k.name()).isFalse();
        }
    }

    @Test
    void aCubinThatIsNotTheRecordedOneIsReported() {
        KernelManifest shipped = KernelManifest.loadShipped();
        KernelManifest.Kernel k = shipped.kernels().getFirst();
        KernelManifest.Target t = k.targets().get("sm_90a");
        KernelManifest.Target wrong = new KernelManifest.Target(t.ptx(), t.entry(), t.numWarps(), t.numStages(),
                t.sharedBytes(), t.globalScratchSize(), t.globalScratchAlign(), t.profileScratchSize(), t.ptxVersion(),
                t.ptxSha256(), t.cubin(), "0".repeat(64), t.cubinCompute());
        KernelManifest.Kernel changed = new KernelManifest.Kernel(k.name(), k.source(), k.function(), k.sourceSha256(),
                k.constexprs(), k.args(), Map.of("sm_90a", wrong));
        assertThat(ShippedKernels.problems(new KernelManifest(shipped.tritonVersion(), List.of(changed))))
                .singleElement().asString().contains(t.cubin()).contains("sha256 differs");
    }

    @Test
    void everyKernelIsCompiledForHopperAndAmpere() {
        for (KernelManifest.Kernel k : KernelManifest.loadShipped().kernels()) {
            assertThat(k.targets().keySet()).as(k.name()).containsAll(Set.of("sm_90a", "sm_80"));
        }
    }
}
