package dev.calibquant.cli;

import static org.assertj.core.api.Assertions.assertThat;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.calibquant.cache.MemoryUsage;
import dev.calibquant.bench.BudgetBenchmark;
import dev.calibquant.bench.KvBudget;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.LocalDate;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;

/** {@code bench --budget-gb}: its options, and its table, JSON and CSV on a report made without a GPU. */
class BenchBudgetTest {
    private static final long BUDGET = 100_000_000_000L;
    // the BENCHMARKS.md sequence with 256 generated tokens reserved, 32 layers (see KvBudgetTest for the arithmetic)
    private static final MemoryUsage FP16 = new MemoryUsage(483_524_608L, 0, 0, 483_524_608L);
    private static final MemoryUsage ONE_BIT = new MemoryUsage(32 * 1_478_656L, 32 * 851_968L, 32 * 16_384L, 483_524_608L);
    private static final MemoryUsage TWO_BIT = new MemoryUsage(32 * 1_478_656L, 32 * 1_703_936L, 32 * 16_384L, 483_524_608L);

    /** fp16 206 sequences in one step of 640 µs; 1-bit 1331 sequences in 3 sub-batches of 444 at 250 µs each. */
    private static BudgetBenchmark.Report report() {
        KvBudget.Fit fp16 = KvBudget.fit("fp16", BUDGET, 32, FP16);
        KvBudget.Fit oneBit = KvBudget.fit("1-bit", BUDGET, 32, ONE_BIT);
        KvBudget.Fit twoBit = KvBudget.fit("2-bit", BUDGET, 32, TWO_BIT);
        return new BudgetBenchmark.Report("NVIDIA H200", "sm_90a", BUDGET, 32, 256, 128,
                new BudgetBenchmark.PathFigures(fp16, KvBudget.split(206, 206), "", 640.0, 1648, 0),
                new BudgetBenchmark.PathFigures(oneBit, KvBudget.split(1331, 665), "at most 665 sequences per step asked for",
                        250.0, 9317, 2),
                new BudgetBenchmark.PathFigures(twoBit, KvBudget.split(976, 976), "", 600.0, 9317, 2));
    }

    @Test
    void theTableShowsBothCachesTheirMemoryAndTheRatio() {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        new BudgetOutput(report(), LocalDate.of(2026, 11, 30)).printTable(new PrintStream(bytes, true, StandardCharsets.UTF_8));
        String table = bytes.toString(StandardCharsets.UTF_8);
        // fp16: 10^6 / (32 · 640) = 48.83 steps/s, × 206 = 10,059; 1-bit: 10^6 / (32 · 750) = 41.67, × 1331 = 55,458
        assertThat(table).contains("100.00 GB (100,000,000,000 bytes) over all 32 layers")
                .contains("each holding 128 generated tokens")
                .contains("64 text tokens, 256 generated tokens reserved; 32 q heads, 8 KV heads, D=128")
                .contains("attention only")
                .containsPattern("fp16 \\|       206 \\|           483\\.52 MB \\|           15\\.11 MB \\|             3\\.11 GB \\|             99\\.61 GB \\|    640\\.0 µs \\|\\s+48\\.83 \\|\\s+10,059")
                .containsPattern("1-bit \\|      1331 \\|            75\\.10 MB \\|            2\\.35 MB \\|             3\\.12 GB \\|             99\\.96 GB \\|    750\\.0 µs \\|\\s+41\\.67 \\|\\s+55,458")
                .contains("1-bit / fp16: 6.46× the sequences, 5.51× the sequences × steps/s (the project's target")
                // 2-bit: 976 sequences of 102,367,232 bytes; 10^6 / (32 · 600) = 52.08 steps/s, × 976 = 50,833
                .containsPattern("2-bit \\|       976 \\|           102\\.37 MB .*\\|    600\\.0 µs \\|\\s+52\\.08 \\|\\s+50,833")
                .containsPattern("2-bit / fp16: 4\\.74× the sequences, 5\\.05× the sequences × steps/s\\R")
                .contains("1-bit sequence, all layers: 75,104,256 bytes = full precision 47,316,992 + visual codes 27,262,976 + visual scales 524,288")
                .contains("1-bit timed in 3 equal sub-batches of 444 sequences, one after another (1332 ≥ 1331 sequences; "
                        + "sub-batch step 250.0 µs): at most 665 sequences per step asked for")
                .doesNotContain("fp16 timed in");
    }

    @Test
    void jsonAndCsvCarryTheSameFigures(@TempDir Path dir) throws Exception {
        BudgetOutput out = new BudgetOutput(report(), LocalDate.of(2026, 11, 30));
        JsonNode root = new ObjectMapper().readTree(out.json());
        JsonNode budget = root.path("budget");
        assertThat(root.path("device").asText()).isEqualTo("NVIDIA H200");
        assertThat(budget.path("budget_bytes").asLong()).isEqualTo(BUDGET);
        assertThat(budget.path("paths").get(0).path("sequences").asInt()).isEqualTo(206);
        assertThat(budget.path("paths").get(1).path("sub_batches").asInt()).isEqualTo(3);
        assertThat(budget.path("paths").get(1).path("layer_step_us").asDouble()).isEqualTo(750.0);
        assertThat(budget.path("paths").get(2).path("path").asText()).isEqualTo("2-bit");
        assertThat(budget.path("paths").get(2).path("sequences").asInt()).isEqualTo(976);
        assertThat(budget.path("throughput_ratio").asDouble()).isEqualTo(report().throughputRatio());

        Path csv = dir.resolve("budget.csv");
        out.writeCsv(csv);
        List<String> lines = Files.readAllLines(csv);
        assertThat(lines).hasSize(4);
        List<String> header = List.of(lines.get(0).split(",", -1));
        for (String line : lines.subList(1, 4)) {
            assertThat(line.split(",", -1)).hasSameSizeAs(header.toArray());
        }
        String[] oneBit = lines.get(2).split(",", -1);
        assertThat(oneBit[header.indexOf("path")]).isEqualTo("1-bit");
        assertThat(Long.parseLong(oneBit[header.indexOf("sequence_bytes")])).isEqualTo(75_104_256L);
        assertThat(Double.parseDouble(oneBit[header.indexOf("sequence_steps_per_s")]))
                .isCloseTo(report().oneBit().throughput().sequenceStepsPerSecond(), org.assertj.core.data.Offset.offset(5e-4));
        assertThat(Double.parseDouble(oneBit[header.indexOf("throughput_over_fp16")]))
                .isCloseTo(report().throughputRatio(), org.assertj.core.data.Offset.offset(5e-4));
    }

    @Test
    void badOptionsAreRefusedBeforeAnyGpuWork() {
        String[][] bad = {
            {"--budget-gb", "0"}, {"--budget-gb", "-3"}, {"--budget-gb", "NaN"}, {"--budget-gb", "Infinity"},
            {"--budget-gb", "100", "--png", "x.png"}, {"--budget-gb", "100", "--from-csv", "x.csv"},
            {"--budget-gb", "100", "--layers", "0"}, {"--budget-gb", "100", "--generated-tokens", "-1"},
            {"--budget-gb", "100", "--max-step-batch", "0"}, {"--budget-gb", "100", "--reps", "0"},
            {"--layers", "4"}, {"--max-step-batch", "64"},
        };
        String[] expected = {
            "--budget-gb: a KV budget must be a positive number of GB, got 0.0", "got -3.0", "got NaN", "got Infinity",
            "go with the batch-size table", "go with the batch-size table",
            "must be positive", "must be positive", "must be positive", "must be positive",
            "go with --budget-gb", "go with --budget-gb",
        };
        for (int i = 0; i < bad.length; i++) {
            StringWriter err = new StringWriter();
            CommandLine cl = new CommandLine(new BenchCommand()).setErr(new PrintWriter(err));
            assertThat(cl.execute(bad[i])).as(String.join(" ", bad[i])).isEqualTo(2);
            assertThat(err.toString()).as(String.join(" ", bad[i])).contains(expected[i]);
        }
    }
}
