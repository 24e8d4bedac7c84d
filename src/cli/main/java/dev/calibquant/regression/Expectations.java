package dev.calibquant.regression;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.util.DefaultIndenter;
import com.fasterxml.jackson.core.util.DefaultPrettyPrinter;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.PropertyNamingStrategies;
import com.fasterxml.jackson.databind.SerializationFeature;
import dev.calibquant.kernels.KernelManifest;
import dev.calibquant.kernels.KernelManifestException;
import dev.calibquant.kernels.ShippedKernels;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.TreeMap;

/**
 * The recorded outputs of every kernel variant on every PTX target ({@code ptx/regression/expectations.json}, shipped
 * in the jar): per variant the sha256 of the PTX it was recorded from, and per case the seed, the shape, hashes of
 * the inputs and of the cache contents, and per output its element count, sum, sum of |x|, hash, and a few dozen
 * sampled values, each with the recording run's own bound from the arithmetic (the derivations are in
 * {@code tolerance_notes}).
 */
public record Expectations(int format, String note, Map<String, String> toleranceNotes, Map<String, Target> targets) {
    public static final int FORMAT = 1;
    /** Under the shipped kernels' resource root, like the manifest. */
    public static final String RESOURCE = "regression/expectations.json";
    /** Where it lives in the repository. */
    public static final String REPO_PATH = "ptx/" + RESOURCE;
    public static final String RERECORD_HINT = "re-record on a GPU with `calibquant selftest --regression --record "
            + REPO_PATH + "`";
    /** Sampled elements per output: evenly spaced, first and last included. */
    public static final int SAMPLES = 24;

    public Expectations {
        Objects.requireNonNull(note, "note");
        toleranceNotes = Map.copyOf(Objects.requireNonNull(toleranceNotes, "tolerance_notes"));
        targets = Map.copyOf(Objects.requireNonNull(targets, "targets"));
    }

    /** One PTX target's recording: where it was made, and every variant recorded. */
    public record Target(String device, String driver, String recordedOn, String tritonVersion,
            Map<String, Kernel> kernels) {
        public Target {
            kernels = Map.copyOf(Objects.requireNonNull(kernels, "kernels"));
        }
    }

    /** One variant on one target. */
    public record Kernel(String ptxSha256, List<Case> cases) {
        public Kernel {
            Objects.requireNonNull(ptxSha256, "ptx_sha256");
            cases = List.copyOf(Objects.requireNonNull(cases, "cases"));
        }
    }

    /** One case as recorded. */
    public record Case(int index, long seed, String shape, String inputsSha256, String cacheSha256, int workItems,
            int calibrationMode, List<Output> outputs) {
        public Case {
            Objects.requireNonNull(shape, "shape");
            Objects.requireNonNull(inputsSha256, "inputs_sha256");
            outputs = List.copyOf(Objects.requireNonNull(outputs, "outputs"));
        }

        public Optional<Output> output(String name) {
            return outputs.stream().filter(o -> o.name().equals(name)).findFirst();
        }
    }

    /**
     * One output as recorded: checksums over all {@code count} elements, the recording run's summed bound, and
     * {@link #SAMPLES} sampled elements with their bounds (rounded up to float).
     */
    public record Output(String name, OutputKind kind, int count, double sum, double sumAbs, String sha256,
            double sumTolerance, int[] sampleIndex, float[] sampleValue, float[] sampleTolerance) {
        public Output {
            Objects.requireNonNull(name, "name");
            Objects.requireNonNull(kind, () -> name + ": kind");
            Objects.requireNonNull(sha256, () -> name + ": sha256");
            Objects.requireNonNull(sampleIndex, () -> name + ": sample_index");
            Objects.requireNonNull(sampleValue, () -> name + ": sample_value");
            Objects.requireNonNull(sampleTolerance, () -> name + ": sample_tolerance");
            if (sampleValue.length != sampleIndex.length || sampleTolerance.length != sampleIndex.length) {
                throw new ExpectationsFormatException(name + ": " + sampleIndex.length + " sample indices, "
                        + sampleValue.length + " values, " + sampleTolerance.length + " tolerances");
            }
            for (int i : sampleIndex) {
                if (i < 0 || i >= count) {
                    throw new ExpectationsFormatException(name + ": sample index " + i + " outside 0.." + (count - 1));
                }
            }
        }

        /** The checksums and samples of {@code o}. */
        public static Output of(ObservedOutput o) {
            float[] v = o.values();
            double[] t = o.tolerance();
            double sum = 0;
            double sumAbs = 0;
            double sumTol = 0;
            for (int i = 0; i < v.length; i++) {
                sum += v[i];
                sumAbs += Math.abs(v[i]);
                sumTol += t[i];
            }
            int[] idx = sampleIndices(v.length);
            float[] sv = new float[idx.length];
            float[] st = new float[idx.length];
            for (int k = 0; k < idx.length; k++) {
                sv[k] = v[idx[k]];
                st[k] = roundUp(t[idx[k]]);
            }
            return new Output(o.name(), o.kind(), v.length, sum, sumAbs, Expectations.sha256(v), sumTol, idx, sv, st);
        }

        @Override
        public boolean equals(Object other) {
            return other instanceof Output o && name.equals(o.name) && kind == o.kind && count == o.count
                    && Double.compare(sum, o.sum) == 0 && Double.compare(sumAbs, o.sumAbs) == 0
                    && sha256.equals(o.sha256) && Double.compare(sumTolerance, o.sumTolerance) == 0
                    && Arrays.equals(sampleIndex, o.sampleIndex) && Arrays.equals(sampleValue, o.sampleValue)
                    && Arrays.equals(sampleTolerance, o.sampleTolerance);
        }

        @Override
        public int hashCode() {
            return Objects.hash(name, kind, count, sha256);
        }
    }

    /** {@code min(n, SAMPLES)} indices spread evenly over {@code [0, n)}, first and last included. */
    static int[] sampleIndices(int n) {
        int m = Math.min(n, SAMPLES);
        int[] idx = new int[m];
        for (int k = 0; k < m; k++) {
            idx[k] = m == 1 ? 0 : (int) Math.round((double) k * (n - 1) / (m - 1));
        }
        return idx;
    }

    /** The smallest float not below {@code x}: a bound stored as float stays a bound. */
    static float roundUp(double x) {
        float f = (float) x;
        return f < x ? Math.nextUp(f) : f;
    }

    /** SHA-256 of the values' IEEE bits, big-endian. */
    public static String sha256(float[] values) {
        byte[] bytes = new byte[4 * values.length];
        for (int i = 0; i < values.length; i++) {
            int b = Float.floatToRawIntBits(values[i]);
            bytes[4 * i] = (byte) (b >>> 24);
            bytes[4 * i + 1] = (byte) (b >>> 16);
            bytes[4 * i + 2] = (byte) (b >>> 8);
            bytes[4 * i + 3] = (byte) b;
        }
        return ShippedKernels.sha256(bytes);
    }

    /** A file with no recording yet, carrying the notes. */
    public static Expectations empty(String note) {
        return new Expectations(FORMAT, note, notes(), Map.of());
    }

    private static Map<String, String> notes() {
        Map<String, String> m = new LinkedHashMap<>();
        for (OutputKind k : OutputKind.values()) {
            m.put(k.name().toLowerCase(java.util.Locale.ROOT), k.note());
        }
        return m;
    }

    /** This file with {@code target}'s recording replaced by {@code t} (the tolerance notes refreshed). */
    public Expectations withTarget(String target, Target t) {
        Map<String, Target> m = new TreeMap<>(targets);
        m.put(target, t);
        return new Expectations(FORMAT, note, notes(), m);
    }

    public Optional<Kernel> kernel(String target, String variant) {
        Target t = targets.get(target);
        return t == null ? Optional.empty() : Optional.ofNullable(t.kernels().get(variant));
    }

    private static ObjectMapper mapper() {
        return new ObjectMapper()
                .setPropertyNamingStrategy(PropertyNamingStrategies.SNAKE_CASE)
                .enable(DeserializationFeature.FAIL_ON_NULL_FOR_PRIMITIVES)
                .enable(DeserializationFeature.FAIL_ON_MISSING_CREATOR_PROPERTIES)
                .enable(SerializationFeature.ORDER_MAP_ENTRIES_BY_KEYS);
    }

    public static Expectations read(InputStream json) {
        Expectations e;
        try {
            e = mapper().readValue(json, Expectations.class);
        } catch (IOException | RuntimeException ex) {
            String why = ex.getMessage() == null ? ex.getClass().getSimpleName()
                    : ex.getMessage().lines().findFirst().orElse("").replaceAll(" \\(for .*|\\s*at \\[Source.*", "");
            throw new ExpectationsFormatException("regression expectations are malformed: " + why, ex);
        }
        if (e.format() != FORMAT) {
            throw new ExpectationsFormatException("regression expectations have format " + e.format() + "; this "
                    + "version reads format " + FORMAT + "; " + RERECORD_HINT);
        }
        return e;
    }

    public static Expectations read(Path file) {
        java.util.Optional<String> notAFile = dev.calibquant.io.InputFile.whyNotARegularFile(file);
        if (notAFile.isPresent()) {
            throw new ExpectationsFormatException(notAFile.get() + ", not a regression expectations file", null);
        }
        try (InputStream in = Files.newInputStream(file)) {
            return read(in);
        } catch (java.nio.file.NoSuchFileException e) {
            throw new ExpectationsFormatException(file + ": no such file", e);
        } catch (IOException e) {
            throw new ExpectationsFormatException("cannot read " + file + ": " + e.getMessage(), e);
        } catch (ExpectationsFormatException e) {
            throw new ExpectationsFormatException(file + ": " + e.getMessage(), e);
        }
    }

    /** The expectations shipped in the jar, or empty if none were recorded. */
    public static Optional<Expectations> shipped() {
        byte[] bytes;
        try {
            bytes = ShippedKernels.readBytes(RESOURCE);
        } catch (KernelManifestException e) {
            return Optional.empty();
        }
        return Optional.of(read(new ByteArrayInputStream(bytes)));
    }

    /** Pretty JSON: objects one field a line, arrays of numbers on one line. */
    public String toJson() {
        DefaultPrettyPrinter printer = new DefaultPrettyPrinter()
                .withArrayIndenter(DefaultPrettyPrinter.NopIndenter.instance)
                .withObjectIndenter(new DefaultIndenter("  ", "\n"));
        try {
            return mapper().writer(printer).writeValueAsString(this) + "\n";
        } catch (JsonProcessingException e) {
            throw new IllegalStateException("cannot write expectations", e);
        }
    }

    /** Writes the file whole (to a temporary file first, then moved over {@code file}). */
    public void write(Path file) throws IOException {
        Path dir = file.toAbsolutePath().getParent();
        Files.createDirectories(dir);
        byte[] json = toJson().getBytes(StandardCharsets.UTF_8);
        dev.calibquant.io.OutputFile.write(file, out -> out.write(json));
    }

    /** Every problem that makes this file unusable for {@code manifest}'s shipped PTX, one line each. */
    public List<String> problems(KernelManifest manifest, java.util.function.Function<KernelManifest.Kernel,
            List<CaseSpec>> cases) {
        List<String> problems = new java.util.ArrayList<>();
        for (KernelManifest.Kernel k : manifest.kernels()) {
            for (Map.Entry<String, KernelManifest.Target> t : k.targets().entrySet()) {
                String where = k.name() + " [" + t.getKey() + "]";
                Optional<Kernel> recorded = kernel(t.getKey(), k.name());
                if (recorded.isEmpty()) {
                    problems.add(where + ": no recorded expectations");
                    continue;
                }
                String ptxHash = ShippedKernels.sha256(ShippedKernels.readBytes(t.getValue().ptx()));
                if (!recorded.get().ptxSha256().equals(ptxHash)) {
                    problems.add(where + ": recorded from PTX sha256 " + recorded.get().ptxSha256() + ", the PTX now "
                            + "shipped is " + ptxHash);
                }
                List<String> want = cases.apply(k).stream().map(c -> c.index() + "/" + c.seed() + "/" + c.shape()).toList();
                List<String> have = recorded.get().cases().stream()
                        .map(c -> c.index() + "/" + c.seed() + "/" + c.shape()).toList();
                if (!want.equals(have)) {
                    problems.add(where + ": recorded cases " + have + " are not the cases the suite runs now " + want);
                }
            }
        }
        return problems;
    }
}
