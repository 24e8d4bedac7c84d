package dev.calibquant.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import dev.calibquant.cuda.Cuda;
import dev.calibquant.cuda.CudaAvailability;
import dev.calibquant.cuda.DeviceProperties;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.kernels.KernelManifest;
import dev.calibquant.profiling.Nvtx;
import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

/** {@code calibquant info}: the JDK, the driver, each GPU — or the exact reason no GPU can be used. */
@Command(name = "info", mixinStandardHelpOptions = true,
        description = "Print the JDK, the NVIDIA driver and every GPU, or why no GPU can be used.")
public final class InfoCommand implements Callable<Integer> {

    @Option(names = "--json", description = "Machine-readable output.")
    boolean json;

    @Spec
    CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        Map<String, Object> report = collect();
        PrintWriter out = spec.commandLine().getOut();
        if (json) {
            out.println(new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT).writeValueAsString(report));
        } else {
            printText(report, out);
        }
        out.flush();
        return 0;
    }

    static Map<String, Object> collect() {
        Map<String, Object> r = new LinkedHashMap<>();
        r.put("jdk", Runtime.version().toString() + " (" + System.getProperty("java.vendor") + ", "
                + System.getProperty("java.home") + ")");
        r.put("os", System.getProperty("os.name") + " " + System.getProperty("os.version") + " " + System.getProperty("os.arch"));
        r.put("cpus", Runtime.getRuntime().availableProcessors());
        CudaAvailability a = Cuda.availability();
        r.put("gpu_available", a.available());
        r.put("driver_cuda_version", a.driverVersionText());
        r.put("status", a.reason());
        String manifestStatus;
        int kernels = 0;
        try {
            KernelManifest m = KernelManifest.loadShipped();
            kernels = m.kernels().size();
            manifestStatus = kernels + " kernel variants, Triton " + m.tritonVersion();
        } catch (RuntimeException e) {
            manifestStatus = "unreadable: " + e.getMessage();
        }
        r.put("shipped_kernels", manifestStatus);
        r.put("nvtx", Nvtx.process().status());
        List<Map<String, Object>> gpus = new ArrayList<>();
        if (a.available()) {
            for (int i = 0; i < a.deviceCount(); i++) {
                Map<String, Object> g = new LinkedHashMap<>();
                try {
                    DeviceProperties p = Cuda.device(i).properties();
                    g.put("ordinal", i);
                    g.put("name", p.name());
                    g.put("compute_capability", p.computeMajor() + "." + p.computeMinor());
                    g.put("multiprocessors", p.multiprocessors());
                    g.put("memory_bytes", p.totalMemoryBytes());
                    g.put("memory_gib", String.format(java.util.Locale.ROOT, "%.1f", p.totalMemoryBytes() / (double) (1L << 30)));
                    g.put("l2_cache_bytes", p.l2CacheBytes());
                    g.put("max_shared_per_block_optin", p.maxSharedMemoryPerBlockOptin());
                    g.put("peak_memory_bandwidth_gbs", Math.round(p.peakMemoryBandwidthGBs()));
                    g.put("pci_bus_id", p.pciBusId());
                    g.put("ptx_target", KernelCatalog.bestTarget(p.computeMajor(), p.computeMinor())
                            .orElse("none: compute capability 8.0 or newer is needed"));
                } catch (RuntimeException e) {
                    g.put("ordinal", i);
                    g.put("error", e.getMessage());
                }
                gpus.add(g);
            }
        }
        r.put("gpus", gpus);
        boolean runnable = gpus.stream().anyMatch(g -> g.containsKey("compute_capability")
                && !String.valueOf(g.get("ptx_target")).startsWith("none"));
        r.put("attention_path", runnable ? "GPU" : "CPU (pure Java): "
                + (a.available() ? "no GPU of compute capability 8.0 or newer" : a.reason()));
        return r;
    }

    @SuppressWarnings("unchecked")
    private static void printText(Map<String, Object> r, PrintWriter out) {
        out.printf("JDK            %s%n", r.get("jdk"));
        out.printf("OS             %s, %s CPUs%n", r.get("os"), r.get("cpus"));
        out.printf("CUDA driver    %s%n", r.get("driver_cuda_version"));
        out.printf("GPU status     %s%n", r.get("status"));
        out.printf("Kernels        %s%n", r.get("shipped_kernels"));
        out.printf("NVTX ranges    %s%n", r.get("nvtx"));
        for (Map<String, Object> g : (List<Map<String, Object>>) r.get("gpus")) {
            if (g.containsKey("error")) {
                out.printf("GPU %s          error: %s%n", g.get("ordinal"), g.get("error"));
                continue;
            }
            out.printf("GPU %s          %s, compute capability %s, %s SMs, %s GiB, L2 %d MiB, ~%s GB/s peak, PCI %s, PTX %s%n",
                    g.get("ordinal"), g.get("name"), g.get("compute_capability"), g.get("multiprocessors"),
                    g.get("memory_gib"), ((Integer) g.get("l2_cache_bytes")) >> 20, g.get("peak_memory_bandwidth_gbs"),
                    g.get("pci_bus_id"), g.get("ptx_target"));
        }
        out.printf("Attention      %s%n", r.get("attention_path"));
    }
}
