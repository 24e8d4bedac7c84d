package dev.calibquant.architecture;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/**
 * The layering of the code, as the README's "Layering" section writes it down: every reference from one package of
 * {@code dev.calibquant} to another (imports, static imports and fully qualified names in code; comments and strings
 * are not code) must be an edge this table allows. Read from the sources of both modules and the generated bindings.
 */
class LayeringTest {
    private static final List<Path> SOURCES = List.of(Path.of("src/library/main/java"), Path.of("src/cli/main/java"),
            Path.of("bindings/java"));

    /** Each package and the packages it may use directly. The first nine are the library; the rest the tools. */
    static final Map<String, Set<String>> ALLOWED = new LinkedHashMap<>();

    static {
        allow("quant");
        allow("cache", "quant");
        allow("attention", "cache", "quant");
        allow("cuda.bindings");
        allow("cuda", "cuda.bindings");
        allow("profiling");
        allow("kernels", "cuda", "profiling", "cache");
        allow("gpu", "kernels", "cuda", "profiling", "attention", "cache", "quant");
        allow("sharding", "gpu", "cuda", "attention", "cache", "quant");
        allow("io", "quant");
        allow("model", "attention", "cache", "quant", "io");
        allow("selftest", "gpu", "kernels", "cuda", "attention", "cache", "quant");
        allow("bench", "selftest", "gpu", "kernels", "cuda", "cache", "quant");
        allow("regression", "selftest", "io", "gpu", "kernels", "cuda", "attention", "cache", "quant");
        allow("cli", "model", "io", "selftest", "bench", "regression", "gpu", "kernels", "cuda", "profiling",
                "attention", "cache", "quant");
    }

    static final Set<String> LIBRARY = Set.of("quant", "cache", "attention", "cuda.bindings", "cuda", "profiling",
            "kernels", "gpu", "sharding");

    private static void allow(String pkg, String... uses) {
        ALLOWED.put(pkg, Set.of(uses));
    }

    private static final Pattern PACKAGE = Pattern.compile("^package dev\\.calibquant\\.([\\w.]+);", Pattern.MULTILINE);
    /** A use of a type of another package: lower-case package segments, then a capitalized type name. */
    private static final Pattern USE = Pattern.compile("dev\\.calibquant\\.((?:[a-z]\\w*\\.)*[a-z]\\w*)\\.[A-Z]");
    private static final Pattern COMMENTS_AND_STRINGS = Pattern.compile(
            "/\\*.*?\\*/|//[^\\n]*|\"\"\"(?:.|\\n)*?\"\"\"|\"(?:\\\\.|[^\"\\\\])*\"|'(?:\\\\.|[^'\\\\])*'", Pattern.DOTALL);

    record Edge(String from, String to, Path file) {}

    static List<Edge> edges() throws IOException {
        List<Edge> edges = new ArrayList<>();
        for (Path root : SOURCES) {
            try (Stream<Path> files = Files.walk(root)) {
                for (Path f : files.filter(p -> p.toString().endsWith(".java")).toList()) {
                    String text = read(f);
                    Matcher p = PACKAGE.matcher(text);
                    if (!p.find()) {
                        continue; // module-info
                    }
                    String from = p.group(1);
                    String code = COMMENTS_AND_STRINGS.matcher(text).replaceAll(" ");
                    Set<String> seen = new HashSet<>();
                    Matcher m = USE.matcher(code);
                    while (m.find()) {
                        String to = m.group(1);
                        if (!to.equals(from) && seen.add(to)) {
                            edges.add(new Edge(from, to, f));
                        }
                    }
                }
            }
        }
        return edges;
    }

    private static String read(Path f) {
        try {
            return Files.readString(f);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    @Test
    void everyReferenceBetweenPackagesFollowsTheDeclaredDirection() throws IOException {
        List<Edge> edges = edges();
        assertThat(edges).as("edges read").hasSizeGreaterThan(30);
        List<String> wrong = new ArrayList<>();
        for (Edge e : edges) {
            Set<String> allowed = ALLOWED.get(e.from());
            if (allowed == null) {
                wrong.add(e.file() + ": package " + e.from() + " is not in the declared layering");
            } else if (!allowed.contains(e.to())) {
                wrong.add(e.file() + ": " + e.from() + " -> " + e.to() + " is not an allowed edge");
            }
        }
        assertThat(wrong).isEmpty();
    }

    @Test
    void theDeclaredLayeringHasNoCycleAndTheLibraryUsesNoTool() {
        for (String pkg : ALLOWED.keySet()) {
            assertThat(reachable(pkg)).as("packages reachable from " + pkg).doesNotContain(pkg);
            if (LIBRARY.contains(pkg)) {
                assertThat(LIBRARY).as(pkg + " uses only library packages").containsAll(ALLOWED.get(pkg));
            }
        }
        assertThat(reachable("quant")).isEmpty(); // the CPU core: no GPU code below it...
        assertThat(reachable("attention")).containsOnly("cache", "quant"); // ...nor below the CPU attention
    }

    @Test
    void theTableCatchesAWrongEdge() {
        // the test must be able to fail: an edge against the direction is not allowed
        assertThat(ALLOWED.get("cache")).doesNotContain("gpu");
        assertThat(ALLOWED.get("kernels")).doesNotContain("gpu");
        Matcher m = USE.matcher(COMMENTS_AND_STRINGS.matcher(
                "import dev.calibquant.gpu.DeviceKvCache; // dev.calibquant.cli.X\\n String s = \"dev.calibquant.model.Y\";")
                .replaceAll(" "));
        assertThat(m.find()).isTrue();
        assertThat(m.group(1)).isEqualTo("gpu");
        assertThat(m.find()).isFalse();
    }

    private static Set<String> reachable(String from) {
        Set<String> seen = new TreeSet<>();
        List<String> todo = new ArrayList<>(ALLOWED.getOrDefault(from, Set.of()));
        while (!todo.isEmpty()) {
            String p = todo.removeLast();
            if (seen.add(p)) {
                todo.addAll(ALLOWED.getOrDefault(p, Set.of()));
            }
        }
        return seen;
    }

    @Test
    void onlyTheKernelsPackageBuildsRawLaunchArguments() throws IOException {
        try (Stream<Path> files = Files.walk(SOURCES.getFirst())) {
            List<Path> outside = files.filter(p -> p.toString().endsWith(".java"))
                    .filter(p -> !p.toString().contains("/dev/calibquant/kernels/")
                            && !p.toString().contains("/dev/calibquant/cuda/"))
                    .toList();
            assertThat(outside).isNotEmpty().filteredOn(p -> read(p).contains("LaunchArgs")).isEmpty();
        }
    }
}
