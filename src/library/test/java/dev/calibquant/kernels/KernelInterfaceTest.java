package dev.calibquant.kernels;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** Runs on every machine: Java's table widths and scratch layouts are those the shipped kernels were compiled with. */
class KernelInterfaceTest {

    @Test
    void theShippedManifestAgreesWithJavasConstants() {
        KernelManifest shipped = KernelManifest.loadShipped();
        assertThat(shipped.kernelInterface()).as("interface section of ptx/manifest.json").isNotNull();
        assertThat(KernelInterface.problems(shipped)).isEmpty();
        KernelInterface.verify(shipped);
        assertThat(shipped.kernelInterface().tables().get("seq_tab"))
                .containsExactly("fp_off", "fp_len", "fp_cap", "q_off", "work_first", "work_count");
    }

    @Test
    void aTableOfAnotherWidthIsRefusedNamingIt() {
        KernelManifest shipped = KernelManifest.loadShipped();
        Map<String, List<String>> tables = new HashMap<>(shipped.kernelInterface().tables());
        tables.put("seq_tab", List.of("fp_off", "fp_len", "fp_cap", "q_off", "work_first", "work_count", "extra"));
        KernelManifest changed = new KernelManifest(shipped.tritonVersion(), shipped.kernels(),
                new KernelManifest.Interface(tables, shipped.kernelInterface().scratch()));
        assertThat(KernelInterface.problems(changed)).singleElement().asString()
                .contains("seq_tab").contains("7 columns").contains("Java writes 6");
        assertThatThrownBy(() -> KernelInterface.verify(changed)).isInstanceOf(KernelManifestException.class)
                .hasMessageContaining("seq_tab");
    }

    @Test
    void aScratchLayoutOfAnotherSizeOrAMissingOneIsRefused() {
        KernelManifest shipped = KernelManifest.loadShipped();
        Map<String, Integer> scratch = new HashMap<>(shipped.kernelInterface().scratch());
        scratch.put("rendezvous_slot_ints", 16);
        scratch.remove("quantize_sync_head");
        KernelManifest changed = new KernelManifest(shipped.tritonVersion(), shipped.kernels(),
                new KernelManifest.Interface(shipped.kernelInterface().tables(), scratch));
        assertThat(KernelInterface.problems(changed)).hasSize(2)
                .anySatisfy(p -> assertThat(p).contains("rendezvous_slot_ints").contains("16").contains("32"))
                .anySatisfy(p -> assertThat(p).contains("no scratch layout quantize_sync_head"));
    }

    @Test
    void aManifestWithoutTheSectionCannotBeChecked() {
        KernelManifest old = KernelManifest.parse(new ByteArrayInputStream(
                "{\"triton_version\": \"3.5.0\", \"kernels\": []}".getBytes(StandardCharsets.UTF_8)));
        assertThat(old.kernelInterface()).isNull();
        assertThat(KernelInterface.problems(old)).singleElement().asString().contains("no interface section");
    }
}
