package dev.calibquant.kernels;

import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.CudaModule;
import dev.calibquant.cuda.DeviceProperties;
import dev.calibquant.cuda.UnsupportedDeviceException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.ConcurrentHashMap;

/**
 * The shipped kernels, for one CUDA context: picks the PTX target that suits the device, loads each kernel's module
 * on first use, and owns those modules until closed. Where the target ships a cubin for exactly this device (sm_90a
 * on compute capability 9.0, sm_80 on 8.0) that is loaded as is; otherwise the driver JIT-compiles the PTX (about
 * 0.4 s a variant on a machine whose driver cache is cold). {@code -Dcalibquant.kernels.image=ptx} always loads
 * the PTX.
 */
public final class KernelCatalog implements AutoCloseable {
    public static final String HOPPER = "sm_90a";
    public static final String AMPERE = "sm_80";

    /** Which image of a variant the catalog loads. */
    public enum Image {
        /** The cubin where one ships for this device's exact compute capability, else the PTX. */
        CUBIN_WHERE_SHIPPED,
        /** Always the PTX, JIT-compiled by the driver: the path every other GPU takes, tested on this one. */
        PTX;

        /** The default: {@code -Dcalibquant.kernels.image=ptx} asks for PTX, anything else for cubins. */
        public static Image fromSystemProperty() {
            return "ptx".equalsIgnoreCase(System.getProperty("calibquant.kernels.image", "")) ? PTX : CUBIN_WHERE_SHIPPED;
        }
    }

    private final CudaContext context;
    private final KernelManifest manifest;
    private final String target;
    private final Image image;
    private final int computeMajor;
    private final int computeMinor;
    private final Map<String, Kernel> loaded = new ConcurrentHashMap<>();
    private volatile boolean closed;

    private KernelCatalog(CudaContext context, KernelManifest manifest, String target, Image image) {
        this.context = context;
        this.manifest = manifest;
        this.target = target;
        this.image = image;
        DeviceProperties p = context.device().properties();
        this.computeMajor = p.computeMajor();
        this.computeMinor = p.computeMinor();
    }

    /** The catalog for {@code context}'s device, with the best target the shipped PTX offers for it. */
    public static KernelCatalog open(CudaContext context) {
        return open(context, Image.fromSystemProperty());
    }

    /** {@link #open(CudaContext)} with an explicit image choice. */
    public static KernelCatalog open(CudaContext context, Image image) {
        DeviceProperties p = context.device().properties();
        String target = bestTarget(p.computeMajor(), p.computeMinor())
                .orElseThrow(() -> new UnsupportedDeviceException(p.name() + " (compute capability " + p.computeMajor()
                        + "." + p.computeMinor() + ") cannot run the shipped kernels: they need compute capability 8.0 "
                        + "or newer (Ampere, Ada, Hopper, Blackwell)"));
        return open(context, target, image);
    }

    /** The catalog with an explicit target, e.g. {@code sm_80} PTX on a Hopper card to test its JIT path. */
    public static KernelCatalog open(CudaContext context, String target) {
        return open(context, target, Image.fromSystemProperty());
    }

    /** The catalog with an explicit target and image choice. */
    public static KernelCatalog open(CudaContext context, String target, Image image) {
        KernelManifest manifest = KernelManifest.loadShipped();
        KernelInterface.verify(manifest);
        if (manifest.kernels().stream().noneMatch(k -> k.targets().containsKey(target))) {
            throw new UnsupportedDeviceException("no shipped kernel is compiled for target " + target);
        }
        return new KernelCatalog(context, manifest, target, image);
    }

    /**
     * {@code sm_90a} PTX uses Hopper-only instructions and loads only on compute capability 9.0; every other card from
     * 8.0 on gets the {@code sm_80} PTX, which the driver JIT-compiles forward.
     */
    public static Optional<String> bestTarget(int major, int minor) {
        if (major == 9 && minor == 0) {
            return Optional.of(HOPPER);
        }
        return major >= 8 ? Optional.of(AMPERE) : Optional.empty();
    }

    /** Which image this catalog loads where both ship. */
    public Image image() {
        return image;
    }

    public String target() {
        return target;
    }

    /** What this catalog loads for {@code name}: {@code "cubin"} or {@code "ptx"}. */
    public String imageOf(String name) {
        return usesCubin(manifest.kernel(name).targets().get(target)) ? "cubin" : "ptx";
    }

    private boolean usesCubin(KernelManifest.Target t) {
        return t != null && image == Image.CUBIN_WHERE_SHIPPED && t.hasCubinFor(computeMajor, computeMinor);
    }

    public KernelManifest manifest() {
        return manifest;
    }

    public CudaContext context() {
        return context;
    }

    /** The named kernel variant, loaded on first use. */
    public Kernel kernel(String name) {
        if (closed) {
            throw new IllegalStateException("kernel catalog is closed");
        }
        return loaded.computeIfAbsent(name, this::load);
    }

    /**
     * The production variant of {@code function} whose constexprs include {@code required} (tuning experiments,
     * named {@code x_...}, are never picked).
     */
    public Kernel find(String function, Map<String, Integer> required) {
        return kernel(shipped(manifest, function, required)
                .orElseThrow(() -> new UnsupportedDeviceException("no shipped " + function + " kernel for " + required)));
    }

    /** The first shipped variant of {@code function} with all the {@code required} constexprs (nothing is loaded). */
    public static Optional<String> shipped(KernelManifest manifest, String function, Map<String, Integer> required) {
        return manifest.kernels().stream()
                .filter(k -> k.function().equals(function) && !k.name().startsWith("x_"))
                .filter(k -> required.entrySet().stream().allMatch(e -> constexprEquals(k, e.getKey(), e.getValue())))
                .map(KernelManifest.Kernel::name)
                .findFirst();
    }

    private static boolean constexprEquals(KernelManifest.Kernel k, String name, int value) {
        Object v = k.constexprs().get(name);
        return v instanceof Number n && n.intValue() == value;
    }

    private Kernel load(String name) {
        KernelManifest.Kernel spec = manifest.kernel(name);
        KernelManifest.Target t = spec.targets().get(target);
        if (t == null) {
            throw new UnsupportedDeviceException("kernel " + name + " is not compiled for target " + target);
        }
        String label = name + "[" + target + "]";
        CudaModule module = usesCubin(t) ? context.loadCubin(label + " cubin", ShippedKernels.readBytes(t.cubin()))
                : context.loadPtx(label, ShippedKernels.readText(t.ptx()));
        try {
            return new Kernel(context, spec, t, module, module.function(t.entry()));
        } catch (RuntimeException e) {
            module.close();
            throw e;
        }
    }

    /** Unloads every module this catalog loaded. */
    @Override
    public void close() {
        closed = true;
        List<RuntimeException> failures = new ArrayList<>();
        for (Kernel k : loaded.values()) {
            try {
                k.close();
            } catch (RuntimeException e) {
                failures.add(e);
            }
        }
        loaded.clear();
        if (!failures.isEmpty()) {
            RuntimeException first = failures.getFirst();
            failures.stream().skip(1).forEach(first::addSuppressed);
            throw first;
        }
    }
}
