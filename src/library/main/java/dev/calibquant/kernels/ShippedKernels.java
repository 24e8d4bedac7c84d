package dev.calibquant.kernels;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;

/**
 * Reads the kernels shipped in the jar and checks that they agree with themselves: every PTX was compiled from the
 * kernel source shipped beside it (source hash), is the file the manifest names (PTX hash), and has the
 * {@code .entry} signature the manifest's typed argument list promises (plus Triton's two scratch pointers).
 */
public final class ShippedKernels {

    /** Triton appends a global-scratch and a profile-scratch pointer to every kernel's parameters. */
    public static final int TRITON_SCRATCH_PARAMS = 2;

    private ShippedKernels() {}

    public static String readText(String relative) {
        return new String(readBytes(relative), StandardCharsets.UTF_8);
    }

    public static byte[] readBytes(String relative) {
        try (InputStream in = KernelManifest.resource(relative)) {
            return in.readAllBytes();
        } catch (IOException e) {
            throw new KernelManifestException("cannot read kernel resource " + relative, e);
        }
    }

    public static String sha256(byte[] bytes) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(bytes));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is missing from this JDK", e);
        }
    }

    /** Every disagreement found, one line each; empty when the shipped kernels are consistent. */
    public static List<String> problems(KernelManifest manifest) {
        List<String> problems = new ArrayList<>();
        for (KernelManifest.Kernel kernel : manifest.kernels()) {
            String where = "kernel " + kernel.name();
            try {
                String sourceHash = sha256(readBytes(kernel.source()));
                if (!sourceHash.equals(kernel.sourceSha256())) {
                    problems.add(where + ": source " + kernel.source() + " changed since its PTX was compiled"
                            + " (sha256 now " + sourceHash + ", manifest " + kernel.sourceSha256()
                            + "); re-run tools/build/compile_ptx.py on a GPU host");
                }
            } catch (KernelManifestException e) {
                problems.add(where + ": " + e.getMessage());
            }
            if (kernel.targets().isEmpty()) {
                problems.add(where + ": no compiled target");
            }
            for (Map.Entry<String, KernelManifest.Target> t : kernel.targets().entrySet()) {
                problems.addAll(targetProblems(kernel, t.getKey(), t.getValue()));
            }
        }
        return problems;
    }

    private static List<String> targetProblems(KernelManifest.Kernel kernel, String targetName, KernelManifest.Target target) {
        String where = "kernel " + kernel.name() + " [" + targetName + "]";
        List<String> problems = new ArrayList<>();
        byte[] ptxBytes;
        try {
            ptxBytes = readBytes(target.ptx());
        } catch (KernelManifestException e) {
            return List.of(where + ": " + e.getMessage());
        }
        if (!sha256(ptxBytes).equals(target.ptxSha256())) {
            problems.add(where + ": " + target.ptx() + " is not the file the manifest recorded (sha256 differs)");
        }
        if (target.cubin() != null) {
            // compile_ptx.py writes the cubin and the PTX from one compilation, with both hashes: a cubin that no
            // longer matches its hash is not the one assembled from this PTX
            try {
                if (!sha256(readBytes(target.cubin())).equals(target.cubinSha256())) {
                    problems.add(where + ": " + target.cubin() + " is not the file the manifest recorded (sha256 differs)");
                }
            } catch (KernelManifestException e) {
                problems.add(where + ": " + e.getMessage());
            }
        }
        PtxEntry entry;
        try {
            entry = PtxEntry.parse(new String(ptxBytes, StandardCharsets.UTF_8));
        } catch (KernelManifestException e) {
            return List.of(where + ": " + e.getMessage());
        }
        if (!entry.name().equals(target.entry())) {
            problems.add(where + ": .entry is " + entry.name() + ", manifest says " + target.entry());
        }
        if (!entry.target().equals(targetName)) {
            problems.add(where + ": PTX .target is " + entry.target() + ", filed under " + targetName);
        }
        if (!entry.version().equals(target.ptxVersion())) {
            problems.add(where + ": PTX .version is " + entry.version() + ", manifest says " + target.ptxVersion());
        }
        List<ArgType> args = kernel.argTypes();
        List<String> params = entry.paramTypes();
        if (params.size() != args.size() + TRITON_SCRATCH_PARAMS) {
            problems.add(where + ": .entry has " + params.size() + " parameters, manifest lists " + args.size()
                    + " arguments + " + TRITON_SCRATCH_PARAMS + " scratch pointers");
            return problems;
        }
        for (int i = 0; i < args.size(); i++) {
            if (!args.get(i).matchesPtx(params.get(i))) {
                problems.add(where + ": argument " + i + " (" + kernel.args().get(i).name() + ") is "
                        + args.get(i).tritonName() + " in the manifest but ." + params.get(i) + " in the PTX");
            }
        }
        for (int i = args.size(); i < params.size(); i++) {
            if (!ArgType.PTR_U8.matchesPtx(params.get(i))) {
                problems.add(where + ": scratch parameter " + i + " is ." + params.get(i) + ", expected a 64-bit pointer");
            }
        }
        return problems;
    }
}
