package dev.calibquant.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;

/** `bench --from-csv` re-reads every recorded bench CSV (no GPU): older ones lack the graph and host columns. */
class BenchFromCsvTest {

    private static String run(String... args) {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        PrintStream before = System.out;
        System.setOut(new PrintStream(bytes, true, StandardCharsets.UTF_8));
        try {
            int rc = CalibQuantCli.commandLine().execute(args);
            return rc + "\n" + bytes.toString(StandardCharsets.UTF_8);
        } finally {
            System.setOut(before);
        }
    }

    @Test
    void everyRecordedBenchCsvReadsBackWithItsOwnFigures() throws Exception {
        for (String name : List.of("bench-h200-2026-11-29.csv", "bench-h200-2026-11-29-s3.csv", "bench-h200-2026-11-29-s4.csv")) {
            Path csv = Path.of("docs", name);
            String out = run("bench", "--from-csv", csv.toString());
            assertThat(out).as(name).startsWith("0\n").contains("NVIDIA H200").contains("| 1-bit step |");
            String row256 = Files.readAllLines(csv).stream().filter(l -> l.startsWith("256,")).findFirst().orElseThrow();
            String oneBit = String.format("%.1f µs", Double.parseDouble(row256.split(",")[1]));
            assertThat(out).as(name).contains(oneBit);
        }
        String s4 = run("bench", "--from-csv", "docs/bench-h200-2026-11-29-s4.csv");
        assertThat(s4).contains("host/step").contains("11.4 µs"); // B = 1 host time per step, 18th column
    }

    @Test
    void aCsvWithTheWrongColumnCountIsRefusedByName(@TempDir Path dir) throws Exception {
        Path bad = dir.resolve("short.csv");
        Files.writeString(bad, "batch,a\n1,2,3\n");
        assertThat(run("bench", "--from-csv", bad.toString())).doesNotStartWith("0\n");
    }
}
