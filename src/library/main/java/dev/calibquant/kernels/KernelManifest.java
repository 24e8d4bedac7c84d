package dev.calibquant.kernels;

import com.fasterxml.jackson.annotation.JsonIgnoreProperties;
import com.fasterxml.jackson.annotation.JsonProperty;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.InputStream;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * {@code ptx/manifest.json}, written by {@code tools/build/compile_ptx.py} on the GPU host: every kernel variant, its
 * typed arguments, per GPU target the PTX file and the launch facts Triton recorded, and the tables and scratch
 * layouts the kernels share with the host ({@code kernelInterface}, from {@code ptx/kernels/interface.py}; null in a
 * manifest older than that section).
 */
@JsonIgnoreProperties(ignoreUnknown = true)
public record KernelManifest(
        @JsonProperty("triton_version") String tritonVersion,
        @JsonProperty("kernels") List<Kernel> kernels,
        @JsonProperty("interface") Interface kernelInterface) {

    /** Classpath folder of the shipped kernels (the repository's {@code ptx/} folder). */
    public static final String RESOURCE_ROOT = "dev/calibquant/ptx/";

    public KernelManifest {
        Objects.requireNonNull(tritonVersion, "manifest: triton_version");
        kernels = List.copyOf(Objects.requireNonNull(kernels, "manifest: kernels"));
    }

    /** A manifest without the interface section. */
    public KernelManifest(String tritonVersion, List<Kernel> kernels) {
        this(tritonVersion, kernels, null);
    }

    /**
     * The manifest's {@code interface} section: per int64 table its column names in order, and the int32 counts of
     * the scratch layouts.
     */
    @JsonIgnoreProperties(ignoreUnknown = true)
    public record Interface(
            @JsonProperty("tables") Map<String, List<String>> tables,
            @JsonProperty("scratch") Map<String, Integer> scratch) {

        public Interface {
            tables = Map.copyOf(Objects.requireNonNull(tables, "manifest interface: tables"));
            scratch = Map.copyOf(Objects.requireNonNull(scratch, "manifest interface: scratch"));
        }
    }

    /** One compiled variant of a Triton kernel (a source function with fixed constexprs). */
    @JsonIgnoreProperties(ignoreUnknown = true)
    public record Kernel(
            @JsonProperty("name") String name,
            @JsonProperty("source") String source,
            @JsonProperty("function") String function,
            @JsonProperty("source_sha256") String sourceSha256,
            @JsonProperty("constexprs") Map<String, Object> constexprs,
            @JsonProperty("args") List<Arg> args,
            @JsonProperty("targets") Map<String, Target> targets) {

        public Kernel {
            Objects.requireNonNull(name, "manifest kernel: name");
            Objects.requireNonNull(source, () -> "manifest kernel " + name + ": source");
            Objects.requireNonNull(sourceSha256, () -> "manifest kernel " + name + ": source_sha256");
            constexprs = constexprs == null ? Map.of() : Map.copyOf(constexprs);
            args = List.copyOf(Objects.requireNonNull(args, () -> "manifest kernel " + name + ": args"));
            targets = Map.copyOf(Objects.requireNonNull(targets, () -> "manifest kernel " + name + ": targets"));
        }

        public List<ArgType> argTypes() {
            return args.stream().map(a -> ArgType.fromTriton(a.type())).toList();
        }
    }

    @JsonIgnoreProperties(ignoreUnknown = true)
    public record Arg(@JsonProperty("name") String name, @JsonProperty("type") String type) {}

    /** The facts needed to load and launch one variant on one target. */
    @JsonIgnoreProperties(ignoreUnknown = true)
    public record Target(
            @JsonProperty("ptx") String ptx,
            @JsonProperty("entry") String entry,
            @JsonProperty("num_warps") int numWarps,
            @JsonProperty("num_stages") int numStages,
            @JsonProperty("shared") int sharedBytes,
            @JsonProperty("global_scratch_size") long globalScratchSize,
            @JsonProperty("global_scratch_align") long globalScratchAlign,
            @JsonProperty("profile_scratch_size") long profileScratchSize,
            @JsonProperty("ptx_version") String ptxVersion,
            @JsonProperty("ptx_sha256") String ptxSha256,
            @JsonProperty("cubin") String cubin,
            @JsonProperty("cubin_sha256") String cubinSha256,
            @JsonProperty("cubin_compute") int cubinCompute) {

        public int threadsPerBlock() {
            return 32 * numWarps;
        }

        /**
         * Whether this target ships a cubin (the PTX assembled ahead of time) for a device of compute capability
         * {@code major.minor}: a cubin runs only on the exact capability it was built for.
         */
        public boolean hasCubinFor(int major, int minor) {
            return cubin != null && cubinCompute == major * 10 + minor;
        }
    }

    public Kernel kernel(String name) {
        return kernels.stream()
                .filter(k -> k.name().equals(name))
                .findFirst()
                .orElseThrow(() -> new KernelManifestException("no kernel named '" + name + "' in the manifest"));
    }

    public static KernelManifest parse(InputStream json) {
        try {
            return new ObjectMapper().enable(DeserializationFeature.FAIL_ON_NULL_FOR_PRIMITIVES)
                    .readValue(json, KernelManifest.class);
        } catch (IOException | RuntimeException e) {
            throw new KernelManifestException("kernel manifest is malformed: " + e.getMessage(), e);
        }
    }

    /** The manifest shipped in the jar. */
    public static KernelManifest loadShipped() {
        try (InputStream in = resource("manifest.json")) {
            return parse(in);
        } catch (IOException e) {
            throw new KernelManifestException("cannot read the shipped kernel manifest", e);
        }
    }

    static InputStream resource(String relative) {
        InputStream in = KernelManifest.class.getClassLoader().getResourceAsStream(RESOURCE_ROOT + relative);
        if (in == null) {
            throw new KernelManifestException("kernel resource " + RESOURCE_ROOT + relative + " is not on the class path");
        }
        return in;
    }
}
