package dev.calibquant.architecture;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/** The fences the architecture relies on, checked on the sources. */
class LayeringTest {
    private static final Path MAIN = Path.of("src/main/java/dev/calibquant");

    private static List<Path> sourcesOutside(String pkg) throws IOException {
        try (Stream<Path> files = Files.walk(MAIN)) {
            return files.filter(p -> p.toString().endsWith(".java"))
                    .filter(p -> !MAIN.relativize(p).startsWith(pkg))
                    .toList();
        }
    }

    private static boolean mentions(Path file, String text) {
        try {
            return Files.readString(file).contains(text);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    @Test
    void onlyTheCudaPackageTouchesTheGeneratedBindings() throws IOException {
        List<Path> outside = sourcesOutside("cuda");
        assertThat(outside).as("sources outside cuda/").isNotEmpty();
        assertThat(outside).filteredOn(p -> mentions(p, "dev.calibquant.cuda.bindings")).isEmpty();
    }

    @Test
    void onlyTheKernelsPackageBuildsRawLaunchArguments() throws IOException {
        List<Path> outside = sourcesOutside("kernels").stream()
                .filter(p -> !MAIN.relativize(p).startsWith("cuda")).toList();
        assertThat(outside).filteredOn(p -> mentions(p, "LaunchArgs")).isEmpty();
    }

    @Test
    void theCpuMathDependsOnNoGpuCode() throws IOException {
        try (Stream<Path> files = Files.walk(MAIN.resolve("quant"))) {
            assertThat(files.filter(p -> p.toString().endsWith(".java")).toList())
                    .isNotEmpty()
                    .filteredOn(p -> mentions(p, "dev.calibquant.cuda") || mentions(p, "dev.calibquant.kernels"))
                    .isEmpty();
        }
    }
}
