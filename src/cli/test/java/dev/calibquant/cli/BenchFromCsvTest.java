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

    /** A record with the 2- and 4-bit columns (23): their steps and ×floor in the table, their lines in the chart. */
    @Test
    void theTwoAndFourBitColumnsAreReadPrintedAndCharted(@TempDir Path dir) throws Exception {
        List<String> s6 = Files.readAllLines(Path.of("docs/bench-h200-2026-11-29-s6.csv"));
        StringBuilder csv = new StringBuilder(s6.getFirst()).append(
                ",calibquant_1bit_call_us,calibquant_2bit_us,two_bit_floor_us,calibquant_4bit_us,four_bit_floor_us\n");
        for (String row : s6.subList(1, s6.size())) {
            int b = Integer.parseInt(row.split(",")[0]);
            csv.append(row).append(String.format(",%d.25,%d.50,%d.00,%d.75,%d.00%n", 40 + b, 30 + b, b, 70 + b, b));
        }
        Path file = dir.resolve("bench.csv");
        Files.writeString(file, csv);
        String out = run("bench", "--from-csv", file.toString());
        assertThat(out).startsWith("0\n").contains("| 2-bit step |").contains("| 4-bit step |")
                // B = 256: the 2-bit step 286.50 µs over its 256.00 µs floor, the 4-bit step 326.75 µs over its own
                .containsPattern("286\\.5 µs \\|\\s+1\\.12 \\|\\s+326\\.8 µs \\|\\s+1\\.28 \\|");
        Path png = dir.resolve("bench.png");
        String charted = run("bench", "--from-csv", file.toString(), "--png", png.toString());
        if (DemoCommandTest.whyTextCannotBeDrawn() == null) {
            assertThat(charted).startsWith("0\n");
            assertThat(Files.size(png)).isPositive();
        } else { // a host without fonts (the GPU hosts): the table still prints, the run fails, nothing is written
            assertThat(charted).startsWith("1\n").contains("| 2-bit step |");
            assertThat(png).doesNotExist();
        }
        Path wrong = dir.resolve("twenty.csv");
        Files.writeString(wrong, csv.toString().replaceAll(",[0-9.]+\n", "\n"));
        assertThat(run("bench", "--from-csv", wrong.toString())).doesNotStartWith("0\n");
    }

    /** A replay says when its figures were measured, never today's date, and marks missing figures "-", not NaN. */
    @Test
    void aReplayNamesTheRecordedDateAndMarksMissingColumns(@TempDir Path dir) throws Exception {
        String old = run("bench", "--from-csv", "docs/bench-h200-2026-11-29-s6.csv");
        assertThat(old).startsWith("0\n").contains("date not recorded").contains("earlier version of bench")
                .doesNotContain(java.time.LocalDate.now().toString()).doesNotContain("NaN")
                .doesNotContain("DeviceKvCache");

        List<String> s6 = Files.readAllLines(Path.of("docs/bench-h200-2026-11-29-s6.csv"));
        StringBuilder csv = new StringBuilder(s6.getFirst()).append(",calibquant_1bit_call_us,calibquant_2bit_us,"
                + "two_bit_floor_us,calibquant_4bit_us,four_bit_floor_us,date\n");
        for (String row : s6.subList(1, s6.size())) {
            csv.append(row).append(",20.00,30.00,10.00,40.00,20.00,2026-12-01\n");
        }
        Path file = dir.resolve("dated.csv");
        Files.writeString(file, csv);
        String dated = run("bench", "--from-csv", file.toString());
        assertThat(dated).startsWith("0\n").contains("NVIDIA H200, PTX sm_90a, 2026-12-01")
                .contains("through DeviceKvCache").doesNotContain("NaN");

        Path badDate = dir.resolve("bad-date.csv");
        Files.writeString(badDate, csv.toString().replace("2026-12-01", "2026-13-01"));
        assertThat(run("bench", "--from-csv", badDate.toString())).doesNotStartWith("0\n");
    }

    /** What bench --csv writes, --from-csv reads back: every figure, the device, the target and today's date. */
    @Test
    void aWrittenCsvReadsBackWithEveryColumn(@TempDir Path dir) throws Exception {
        List<dev.calibquant.bench.DecodeBenchmark.Row> rows = List.of(
                new dev.calibquant.bench.DecodeBenchmark.Row(1, 14.25, 15.5, 24.1, 601, 3.5, 0.31, 3, 40, 13.75, 9.8,
                        41.3, 21.5, 0.6, 31.75, 1.2),
                new dev.calibquant.bench.DecodeBenchmark.Row(256, 203.0, 847.5, 1472.1, 2522, 902.5, 82.8, 3, 2048,
                        202.2, 7.9, 296.3, 286.5, 165.6, 326.75, 331.2));
        var report = new dev.calibquant.bench.DecodeBenchmark.Report("NVIDIA H100 80GB HBM3", "sm_90a", 3870, 216,
                rows, "cubin");
        Path csv = dir.resolve("bench.csv");
        BenchCommand.writeCsv(csv, report, java.util.Map.of(256, 783.7));
        assertThat(Files.readAllLines(csv)).allSatisfy(l -> assertThat(l.split(",", -1)).hasSize(24));
        String out = run("bench", "--from-csv", csv.toString());
        assertThat(out).startsWith("0\n").contains("NVIDIA H100 80GB HBM3, PTX sm_90a, " + java.time.LocalDate.now())
                .contains("through DeviceKvCache").doesNotContain("NaN")
                // B = 256: 1-bit 203.0 over its 82.8 floor, graph, host, call; 2-bit 286.5 over 165.6; 4-bit 326.8
                .containsPattern("256 \\|\\s+203\\.0 µs \\|\\s+202\\.2 µs \\|\\s+7\\.9 µs \\|\\s+296\\.3 µs \\|"
                        + "\\s+82\\.8 µs \\|\\s+2\\.45 \\|\\s+286\\.5 µs \\|\\s+1\\.73 \\|\\s+326\\.8 µs \\|")
                .contains("783.7 µs");
    }

    @Test
    void aCsvWithTheWrongColumnCountIsRefusedByName(@TempDir Path dir) throws Exception {
        Path bad = dir.resolve("short.csv");
        Files.writeString(bad, "batch,a\n1,2,3\n");
        assertThat(run("bench", "--from-csv", bad.toString())).doesNotStartWith("0\n");
    }
}
