package dev.calibquant.kernels;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Java's side of {@code ptx/kernels/interface.py}: the table widths and scratch layouts this library launches with,
 * checked against the manifest the kernels were compiled with. A kernel that reads a seven-column {@code seq_tab}
 * while Java writes six reads the wrong offsets without any error, so a disagreement refuses to load.
 */
final class KernelInterface {

    private KernelInterface() {
    }

    /** Table name to the column count Java writes. */
    static Map<String, Integer> javaTables() {
        Map<String, Integer> m = new LinkedHashMap<>();
        m.put("seq_tab", CalibQuantKernels.SEQ_COLS);
        m.put("span_tab", CalibQuantKernels.SPAN_COLS);
        m.put("work_tab", CalibQuantKernels.WORK_COLS);
        m.put("mm_tab", CalibQuantKernels.MM_COLS);
        m.put("qs_tab", CalibQuantKernels.QS_COLS);
        return m;
    }

    /** Scratch layout name to the int32 count Java sizes and zeroes with. */
    static Map<String, Integer> javaScratch() {
        Map<String, Integer> m = new LinkedHashMap<>();
        m.put("rendezvous_slot_ints", CalibQuantKernels.RENDEZVOUS_SLOT_INTS);
        m.put("quantize_sync_head", QuantizePlan.SYNC_HEAD);
        m.put("quantize_sync_per_group", QuantizePlan.SYNC_PER_GROUP);
        return m;
    }

    /** Every disagreement between Java's constants and the manifest's interface, as sentences; empty when none. */
    static List<String> problems(KernelManifest manifest) {
        KernelManifest.Interface spec = manifest.kernelInterface();
        if (spec == null) {
            return List.of("the kernel manifest has no interface section (written by a compile_ptx.py older than "
                    + "ptx/kernels/interface.py): its table layouts cannot be checked");
        }
        List<String> problems = new ArrayList<>();
        javaTables().forEach((table, columns) -> {
            List<String> names = spec.tables().get(table);
            if (names == null) {
                problems.add("the kernel manifest's interface has no table " + table);
            } else if (names.size() != columns) {
                problems.add(table + ": the kernels read " + names.size() + " columns " + names + ", Java writes "
                        + columns);
            }
        });
        javaScratch().forEach((name, ints) -> {
            Integer kernels = spec.scratch().get(name);
            if (kernels == null) {
                problems.add("the kernel manifest's interface has no scratch layout " + name);
            } else if (kernels.intValue() != ints) {
                problems.add(name + ": the kernels use " + kernels + " int32, Java sizes " + ints);
            }
        });
        return problems;
    }

    /** @throws KernelManifestException naming every disagreement */
    static void verify(KernelManifest manifest) {
        List<String> problems = problems(manifest);
        if (!problems.isEmpty()) {
            throw new KernelManifestException("the shipped kernels and this library disagree on their interface: "
                    + String.join("; ", problems));
        }
    }
}
