package dev.calibquant.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import dev.calibquant.cache.MemoryUsage;
import dev.calibquant.bench.BudgetBenchmark;
import dev.calibquant.bench.DecodeBenchmark;
import dev.calibquant.bench.KvBudget;
import java.io.IOException;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.LocalDate;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/** {@code bench --budget-gb}: the fixed-budget figures as a table, JSON or CSV (one row per cache). */
final class BudgetOutput {
    static final String BASIS = "attention only: steps/s = 1 / (layers × one layer's decode attention step); "
            + "no projections, MLP or sampling";

    private final BudgetBenchmark.Report report;
    private final String date;

    BudgetOutput(BudgetBenchmark.Report report, LocalDate date) {
        this.report = report;
        this.date = date.toString();
    }

    void printTable(PrintStream out) {
        BudgetBenchmark.Report r = report;
        out.printf(Locale.ROOT, "%s, PTX %s, %s%n", r.device(), r.target(), date);
        out.printf(Locale.ROOT, "decode throughput at a fixed KV memory budget: %s GB (%,d bytes) over all %d layers%n",
                gb(r.budgetBytes()), r.budgetBytes(), r.layers());
        out.printf(Locale.ROOT, "per sequence: %d prefix + %d visual + %d text tokens, %d generated tokens reserved; "
                + "%d q heads, %d KV heads, D=%d%n", DecodeBenchmark.PREFIX, DecodeBenchmark.VISUAL,
                DecodeBenchmark.TEXT, r.generatedTokens(), DecodeBenchmark.QUERY_HEADS, DecodeBenchmark.KV_HEADS,
                DecodeBenchmark.HEAD_DIM);
        out.printf(Locale.ROOT, "bytes per sequence: the cache's own accounting of one sequence allocated with all %d "
                + "layers on this device%n", r.layers());
        out.printf(Locale.ROOT, "layer step: one layer's decode attention over all sequences, each holding %d generated "
                + "tokens (the mean context), launched from Java%n", r.heldGeneratedTokens());
        out.printf(Locale.ROOT, "throughput: %s%n%n", BASIS);
        out.println(" path | sequences | one seq, all layers | one seq, one layer | all seqs, one layer | all seqs, all layers |  layer step | steps/s (all layers) | sequences × steps/s");
        for (BudgetBenchmark.PathFigures p : r.paths()) {
            KvBudget.Fit f = p.fit();
            KvBudget.Throughput t = p.throughput();
            out.printf(Locale.ROOT, "%5s | %9d | %16s MB | %15s MB | %16s GB | %17s GB | %8.1f µs | %20.2f | %,19.0f%n",
                    f.path(), f.sequences(), mb(f.sequenceBytes()), mb(f.sequenceLayerBytes()), gb(f.layerBytes()),
                    gb(f.usedBytes()), p.layerStepUs(), t.stepsPerSecond(), t.sequenceStepsPerSecond());
        }
        for (BudgetBenchmark.PathFigures p : List.of(r.oneBit(), r.twoBit())) {
            out.printf(Locale.ROOT, "%s / fp16: %.2f× the sequences, %.2f× the sequences × steps/s%s%n", p.fit().path(),
                    r.sequenceRatio(p), p.throughput().over(r.fp16().throughput()),
                    p == r.oneBit() ? " (the project's target: ≥ 10×)" : "");
        }
        for (BudgetBenchmark.PathFigures p : r.paths()) {
            MemoryUsage u = p.fit().perSequence();
            out.printf(Locale.ROOT, "%s sequence, all layers: %,d bytes = full precision %,d + visual codes %,d + visual scales %,d%n",
                    p.fit().path(), u.totalBytes(), u.fullPrecisionBytes(), u.visualCodeBytes(), u.visualScaleBytes());
        }
        for (BudgetBenchmark.PathFigures p : r.paths()) {
            KvBudget.Split s = p.split();
            if (!s.whole()) {
                out.printf(Locale.ROOT, "%s timed in %d equal sub-batches of %d sequences, one after another (%d ≥ %d "
                        + "sequences; sub-batch step %.1f µs): %s%n", p.fit().path(), s.subBatches(), s.subBatchSize(),
                        s.timedSequences(), s.sequences(), p.subBatchStepUs(), p.splitReason());
            }
        }
    }

    /** The report as JSON, the budget section under {@code "budget"}. */
    String json() {
        BudgetBenchmark.Report r = report;
        Map<String, Object> budget = new LinkedHashMap<>();
        budget.put("budget_bytes", r.budgetBytes());
        budget.put("layers", r.layers());
        budget.put("generated_tokens", r.generatedTokens());
        budget.put("held_generated_tokens", r.heldGeneratedTokens());
        budget.put("throughput_basis", BASIS);
        budget.put("paths", r.paths().stream().map(BudgetOutput::row).toList());
        budget.put("sequence_ratio", r.sequenceRatio());
        budget.put("throughput_ratio", r.throughputRatio());
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("date", date);
        out.put("device", r.device());
        out.put("ptx_target", r.target());
        out.put("budget", budget);
        try {
            return new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT).writeValueAsString(out);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    void writeCsv(Path file) throws IOException {
        List<Map<String, Object>> rows = report.paths().stream().map(this::csvRow).toList();
        dev.calibquant.io.OutputFile.write(file, out -> {
            PrintWriter w = new PrintWriter(new java.io.OutputStreamWriter(out, java.nio.charset.StandardCharsets.UTF_8));
            w.println(String.join(",", rows.getFirst().keySet()));
            for (Map<String, Object> row : rows) {
                w.println(String.join(",", row.values().stream().map(BudgetOutput::csvField).toList()));
            }
            w.flush();
            if (w.checkError()) {
                throw new IOException("write failed");
            }
        });
    }

    private Map<String, Object> csvRow(BudgetBenchmark.PathFigures p) {
        Map<String, Object> row = new LinkedHashMap<>();
        row.put("budget_bytes", report.budgetBytes());
        row.put("layers", report.layers());
        row.put("generated_tokens", report.generatedTokens());
        row.put("held_generated_tokens", report.heldGeneratedTokens());
        row.putAll(row(p));
        row.put("throughput_over_fp16", p.throughput().over(report.fp16().throughput()));
        row.put("device", report.device());
        row.put("ptx_target", report.target());
        return row;
    }

    private static Map<String, Object> row(BudgetBenchmark.PathFigures p) {
        KvBudget.Fit f = p.fit();
        MemoryUsage u = f.perSequence();
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("path", f.path());
        m.put("sequences", f.sequences());
        m.put("sequence_bytes", f.sequenceBytes());
        m.put("full_precision_bytes", u.fullPrecisionBytes());
        m.put("visual_code_bytes", u.visualCodeBytes());
        m.put("visual_scale_bytes", u.visualScaleBytes());
        m.put("sequence_layer_bytes", f.sequenceLayerBytes());
        m.put("layer_bytes", f.layerBytes());
        m.put("used_bytes", f.usedBytes());
        m.put("sub_batches", p.split().subBatches());
        m.put("sub_batch_sequences", p.split().subBatchSize());
        m.put("split_reason", p.splitReason());
        m.put("sub_batch_step_us", p.subBatchStepUs());
        m.put("layer_step_us", p.layerStepUs());
        m.put("steps_per_s", p.throughput().stepsPerSecond());
        m.put("sequence_steps_per_s", p.throughput().sequenceStepsPerSecond());
        m.put("work_items", p.workItems());
        m.put("calibration_mode", p.calibrationMode());
        return m;
    }

    private static String csvField(Object v) {
        String s = v instanceof Double d ? String.format(Locale.ROOT, "%.3f", d) : String.valueOf(v);
        return s.replace(',', ' ');
    }

    private static String mb(long bytes) {
        return String.format(Locale.ROOT, "%.2f", bytes / 1e6);
    }

    private static String gb(long bytes) {
        return String.format(Locale.ROOT, "%.2f", bytes / 1e9);
    }
}
