package dev.calibquant.regression;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.testing.Seeds;
import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class ExpectationsTest {

    static Expectations sample(Random random) {
        List<Expectations.Output> outputs = List.of(
                Expectations.Output.of(Fixtures.output("codes", OutputKind.CODES, 777, 0, random)),
                Expectations.Output.of(Fixtures.output("scales", OutputKind.SCALES, 64, 3e-7, random)));
        Expectations.Case c = new Expectations.Case(0, random.nextLong(), "B2 kvh2 G3 D128 bits1", "ab".repeat(32),
                null, 0, -1, outputs);
        Expectations.Case d = new Expectations.Case(1, random.nextLong(), "B1 kvh8 G4 D128 bits1", "cd".repeat(32),
                "ef".repeat(32), 33, 1, List.of(Expectations.Output.of(
                        Fixtures.output("attention", OutputKind.ATTENTION, 4096, 2.5e-5, random))));
        Expectations.Target t = new Expectations.Target("NVIDIA H200", "13.0", "2026-11-29", "3.6.0",
                Map.of("quantize_pack_b1_d128", new Expectations.Kernel("12".repeat(32), List.of(c, d))));
        return Expectations.empty("a note").withTarget("sm_90a", t);
    }

    @Test
    void writingAndReadingGivesTheSameExpectations(@TempDir Path dir) throws Exception {
        Expectations e = sample(new Random(Seeds.fresh(getClass().getSimpleName())));
        Path file = dir.resolve("sub/expectations.json");
        e.write(file);
        Expectations back = Expectations.read(file);
        assertThat(back).isEqualTo(e);
        assertThat(back.toJson()).isEqualTo(e.toJson());
        assertThat(back.toleranceNotes()).containsKeys("attention", "codes", "scales", "exact");
        assertThat(Files.readString(file)).contains("\"tolerance_notes\"").contains("\"ptx_sha256\"")
                .contains("\"sample_index\" : [0,");
        try (var files = Files.list(dir.resolve("sub"))) {
            assertThat(files.toList()).as("no temporary file left").containsExactly(file);
        }
    }

    @Test
    void anotherTargetIsAddedBesideTheFirst() {
        Expectations e = sample(new Random(Seeds.fresh(getClass().getSimpleName())));
        Expectations both = e.withTarget("sm_80", e.targets().get("sm_90a"));
        assertThat(both.targets()).containsOnlyKeys("sm_80", "sm_90a");
        assertThat(both.kernel("sm_80", "quantize_pack_b1_d128")).isPresent();
        assertThat(both.kernel("sm_100", "quantize_pack_b1_d128")).isEmpty();
    }

    @Test
    void samplesAreSpreadEvenlyWithTheEnds() {
        assertThat(Expectations.sampleIndices(1)).containsExactly(0);
        assertThat(Expectations.sampleIndices(5)).containsExactly(0, 1, 2, 3, 4);
        int[] idx = Expectations.sampleIndices(10_000);
        assertThat(idx).hasSize(Expectations.SAMPLES).startsWith(0).endsWith(9_999).isSorted().doesNotHaveDuplicates();
    }

    @Test
    void boundsStoredAsFloatAreRoundedUp() {
        for (double x : new double[] {0.1, 1e-30, 3.3e-7, 123456.789, 0}) {
            assertThat((double) Expectations.roundUp(x)).isGreaterThanOrEqualTo(x);
            assertThat((double) Expectations.roundUp(x)).isLessThanOrEqualTo(x * (1 + 0x1p-23) + Float.MIN_VALUE);
        }
    }

    @Test
    void malformedFilesAreRefusedWithTheirReason() {
        assertThatThrownBy(() -> Expectations.read(stream("{ not json")))
                .isInstanceOf(ExpectationsFormatException.class).hasMessageContaining("malformed");
        String wrongFormat = sample(new Random(1)).toJson().replace("\"format\" : 1", "\"format\" : 99");
        assertThatThrownBy(() -> Expectations.read(stream(wrongFormat)))
                .isInstanceOf(ExpectationsFormatException.class).hasMessageContaining("format 99")
                .hasMessageContaining("--record");
        String badIndex = sample(new Random(1)).toJson().replaceFirst("\"sample_index\" : \\[0,", "\"sample_index\" : [5000,");
        assertThatThrownBy(() -> Expectations.read(stream(badIndex)))
                .isInstanceOf(ExpectationsFormatException.class).hasMessageContaining("sample index 5000");
        String missing = sample(new Random(1)).toJson().replace("\"inputs_sha256\"", "\"inputs\"");
        assertThatThrownBy(() -> Expectations.read(stream(missing))).isInstanceOf(ExpectationsFormatException.class);
    }

    private static ByteArrayInputStream stream(String s) {
        return new ByteArrayInputStream(s.getBytes(StandardCharsets.UTF_8));
    }
}
