package dev.calibquant.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import dev.calibquant.cuda.Cuda;
import dev.calibquant.cuda.CudaAvailability;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.bench.BudgetBenchmark;
import dev.calibquant.bench.DecodeBenchmark;
import dev.calibquant.bench.KvBudget;
import dev.calibquant.bench.KvBudgetTooSmallException;
import java.awt.BasicStroke;
import java.awt.Color;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.LocalDate;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Callable;
import org.jfree.chart.ChartFactory;
import org.jfree.chart.ChartUtils;
import org.jfree.chart.JFreeChart;
import java.text.DecimalFormat;
import org.jfree.chart.axis.LogAxis;
import org.jfree.chart.axis.NumberTickUnit;
import org.jfree.chart.plot.PlotOrientation;
import org.jfree.chart.plot.XYPlot;
import org.jfree.data.xy.XYSeries;
import org.jfree.data.xy.XYSeriesCollection;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

/**
 * {@code calibquant bench}: the decode workload of docs/benchmarks.md on this GPU, next to its byte floors; with
 * {@code --budget-gb}, decode throughput at a fixed KV memory budget instead.
 */
@Command(name = "bench", mixinStandardHelpOptions = true,
        description = {"Time one decode step (1-bit CalibQuant and fp16) of one InternVL2.5-8B layer (32 query heads, 8 KV heads, head dim 128, 41 + 3328 visual + 64 tokens per sequence) on this GPU.",
            "With --budget-gb: how many sequences each cache fits in that KV budget over all layers, and the decode "
                    + "throughput (sequences × steps/s, attention only) at those batch sizes."})
public final class BenchCommand implements Callable<Integer> {

    /** Measured on one H200 on 2026-11-28 (docs/benchmarks.md): PyTorch 2.11 SDPA fp16 and the paper's reference path. */
    static final Map<Integer, double[]> ANCHORS = Map.of(
            1, new double[] {15.6, 1451}, 8, new double[] {44.4, 1402}, 32, new double[] {114.5, 951},
            64, new double[] {213.5, 1746}, 128, new double[] {407.1, 3307}, 256, new double[] {792.3, 6418});

    @Option(names = "--batches", split = ",", defaultValue = "1,8,32,64,128,256", description = "Batch sizes.")
    int[] batches;

    @Option(names = "--reps", defaultValue = "15", description = "Timed repetitions per figure (median).")
    int reps;

    @Option(names = "--steps", defaultValue = "50", description = "Back-to-back steps per timed repetition.")
    int steps;

    @Option(names = "--json", description = "Print JSON instead of the table.")
    boolean json;

    @Option(names = "--csv", description = "Also write the rows as CSV to this file.")
    Path csv;

    @Option(names = "--png", description = "Also write a chart (time per step against batch size) to this file.")
    Path png;

    @Option(names = "--sdpa", description = "JSON from tools/gpu-host/bench_sdpa.py, measured in the same run, to print alongside.")
    Path sdpa;

    @Option(names = "--from-csv", description = "Re-read a CSV written by --csv (no GPU needed): print and chart it.")
    Path fromCsv;

    @Spec
    CommandSpec spec;

    @Option(names = "--budget-gb", paramLabel = "GB", description = "Instead of the batch sizes: decode throughput at "
            + "this fixed KV memory budget (GB = 10^9 bytes) over all --layers layers, fp16 against 1-bit.")
    Double budgetGb;

    @Option(names = "--layers", paramLabel = "N", description = "With --budget-gb: layers every sequence keeps, all "
            + "counted against the budget (default: 32).")
    Integer layers;

    @Option(names = "--generated-tokens", paramLabel = "N", description = "With --budget-gb: tokens each sequence "
            + "reserves for generation beyond its prompt; steps are timed with half of them held (default: 256).")
    Integer generatedTokens;

    @Option(names = "--max-step-batch", paramLabel = "N", description = "With --budget-gb: time at most N sequences "
            + "per step, the batch in equal sub-batches (default: the whole batch, split only where the device runs out).")
    Integer maxStepBatch;

    @Override
    public Integer call() throws IOException {
        if (budgetGb != null) {
            return budget();
        }
        if (layers != null || generatedTokens != null || maxStepBatch != null) {
            throw new CommandLine.ParameterException(spec.commandLine(),
                    "--layers, --generated-tokens and --max-step-batch go with --budget-gb");
        }
        if (fromCsv != null) {
            Replay replay = readCsv(fromCsv);
            printTable(replay.report(), replay.sdpaUs(), replay.recorded());
            if (png != null) {
                writeChart(replay.report(), replay.sdpaUs());
            }
            return 0;
        }
        for (int b : batches) {
            if (b < 1 || b > 65_536) {
                throw new CommandLine.ParameterException(spec.commandLine(),
                        "--batches takes batch sizes from 1 to 65536, got " + b);
            }
        }
        if (reps < 1 || steps < 1) {
            throw new CommandLine.ParameterException(spec.commandLine(),
                    "--reps and --steps must be positive, got " + reps + " and " + steps);
        }
        CudaAvailability a = Cuda.availability();
        if (!a.available()) {
            System.err.println("bench: needs a GPU: " + a.reason());
            return SelftestCommand.EXIT_NO_GPU;
        }
        Map<Integer, Double> sdpaUs = readSdpa();
        DecodeBenchmark.Report report;
        try (CudaContext ctx = Cuda.device(0).openContext()) {
            report = DecodeBenchmark.run(ctx, batches, reps, steps);
        }
        if (json) {
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("date", LocalDate.now().toString());
            out.put("device", report.device());
            out.put("ptx_target", report.target());
            out.put("copy_gbs", report.copyGBs());
            out.put("kernel_load_ms", report.kernelLoadMs());
            out.put("kernel_image", report.kernelImage());
            out.put("rows", report.rows());
            out.put("sdpa_us", sdpaUs);
            System.out.println(new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT).writeValueAsString(out));
        } else {
            printTable(report, sdpaUs, new Recorded(LocalDate.now(), true));
        }
        if (csv != null) {
            writeCsv(csv, report, sdpaUs);
        }
        if (png != null) {
            writeChart(report, sdpaUs);
        }
        return 0;
    }

    private int budget() throws IOException {
        CommandLine cl = spec.commandLine();
        if (png != null || sdpa != null || fromCsv != null) {
            throw new CommandLine.ParameterException(cl, "--png, --sdpa and --from-csv go with the batch-size table, "
                    + "not with --budget-gb");
        }
        int l = layers == null ? 32 : layers;
        int generated = generatedTokens == null ? 256 : generatedTokens;
        int maxBatch = maxStepBatch == null ? 0 : maxStepBatch;
        if (l <= 0 || generated < 0 || maxBatch < 0 || (maxStepBatch != null && maxBatch == 0) || reps <= 0 || steps <= 0) {
            throw new CommandLine.ParameterException(cl, "--layers, --max-step-batch, --reps and --steps must be "
                    + "positive and --generated-tokens not negative; got " + l + ", " + maxBatch + ", " + reps + ", "
                    + steps + " and " + generated);
        }
        long bytes;
        try {
            bytes = KvBudget.bytesOfGigabytes(budgetGb);
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cl, "--budget-gb: " + e.getMessage());
        }
        CudaAvailability a = Cuda.availability();
        if (!a.available()) {
            System.err.println("bench: needs a GPU: " + a.reason());
            return SelftestCommand.EXIT_NO_GPU;
        }
        BudgetBenchmark.Report report;
        try (CudaContext ctx = Cuda.device(0).openContext()) {
            report = BudgetBenchmark.run(ctx, bytes, l, generated, maxBatch, reps, steps);
        } catch (KvBudgetTooSmallException e) {
            throw new CommandLine.ParameterException(cl, "--budget-gb: " + e.getMessage());
        }
        BudgetOutput output = new BudgetOutput(report, LocalDate.now());
        if (json) {
            System.out.println(output.json());
        } else {
            output.printTable(System.out);
        }
        if (csv != null) {
            output.writeCsv(csv);
        }
        return 0;
    }

    private Map<Integer, Double> readSdpa() throws IOException {
        Map<Integer, Double> m = new TreeMap<>();
        if (sdpa != null) {
            JsonNode root = new ObjectMapper().readTree(sdpa.toFile());
            root.path("sdpa_us").properties().forEach(e -> m.put(Integer.parseInt(e.getKey()), e.getValue().asDouble()));
        }
        return m;
    }

    /**
     * When a table's figures were measured, and whether by this version of bench (whose decode path the table names);
     * {@code date} is null for records older than the date column.
     */
    private record Recorded(LocalDate date, boolean byThisVersion) {}

    private void printTable(DecodeBenchmark.Report r, Map<Integer, Double> sdpaUs, Recorded recorded) {
        System.out.printf("%s, PTX %s, %s%n", r.device(), r.target(),
                recorded.date() == null ? "date not recorded (a CSV older than its date column)" : recorded.date());
        System.out.printf("copy bandwidth %.0f GB/s (read + write); kernel load (cold, all variants of 1-bit D=128, %s) %.0f ms%n",
                r.copyGBs(), r.kernelImage().equals("?") ? "image not recorded" : "from " + r.kernelImage(), r.kernelLoadMs());
        System.out.printf("workload: 32 q heads, 8 KV heads, D=128, %d prefix + %d visual + %d text tokens, one layer%n%n",
                DecodeBenchmark.PREFIX, DecodeBenchmark.VISUAL, DecodeBenchmark.TEXT);
        if (recorded.byThisVersion()) {
            System.out.println("one decode step through DeviceKvCache / DeviceDecodeAttention; per step a service's decode() moves the"
                    + " queries and tables up in one copy and the output down in one copy (\"decode() call\": that whole call,"
                    + " waited for); \"host/step\" is the CPU time to queue a prepared step");
        } else {
            System.out.println("one decode step, recorded by an earlier version of bench (docs/benchmarks.md says which decode path"
                    + " it measured); \"-\" marks a column the record predates");
        }
        System.out.println("    B | 1-bit step | as graph | host/step | decode() call | 1-bit floor | ×floor | 2-bit step | ×floor | 4-bit step | ×floor | fp16 step | fp16 floor | fp16/1-bit | SDPA (this run) | SDPA anchor | paper ref | ref/1-bit | quantize µs | quantize GB/s | %copy");
        for (DecodeBenchmark.Row row : r.rows()) {
            double[] anchor = ANCHORS.getOrDefault(row.batch(), new double[] {Double.NaN, Double.NaN});
            Double s = sdpaUs.get(row.batch());
            System.out.printf("%5d | %11s | %9s | %9s | %13s | %11s | %6s | %10s | %6s | %10s | %6s | %9s | %10s | %10s | %15s | %11s | %9s | %9s | %11s | %13s | %5s%n",
                    row.batch(), cell("%.1f µs", row.calibQuantUs()), cell("%.1f µs", row.calibQuantGraphUs()),
                    cell("%.1f µs", row.calibQuantHostUs()), cell("%.1f µs", row.calibQuantCallUs()),
                    cell("%.1f µs", row.oneBitFloorUs()), cell("%.2f", row.overOneBitFloor()),
                    cell("%.1f µs", row.twoBitUs()), cell("%.2f", row.twoBitUs() / row.twoBitFloorUs()),
                    cell("%.1f µs", row.fourBitUs()), cell("%.2f", row.fourBitUs() / row.fourBitFloorUs()),
                    cell("%.1f µs", row.fp16Us()), cell("%.1f µs", row.fp16FloorUs()),
                    cell("%.2f×", row.speedupOverFp16()), s == null ? "-" : cell("%.1f µs", s),
                    cell("%.1f µs", anchor[0]), cell("%.0f µs", anchor[1]), cell("%.0f×", anchor[1] / row.calibQuantUs()),
                    cell("%.1f", row.quantizeUs()), cell("%.0f", row.quantizeGBs()),
                    cell("%.0f%%", 100 * row.quantizeGBs() / r.copyGBs()));
        }
    }

    /** One table cell: {@code "-"} where the figure is missing (a column the record predates, a batch with no anchor). */
    private static String cell(String format, double value) {
        return Double.isNaN(value) ? "-" : String.format(format, value);
    }

    /** The rows as {@code --from-csv} reads them back (24 columns, the last the date they were measured). */
    static void writeCsv(Path csv, DecodeBenchmark.Report r, Map<Integer, Double> sdpaUs) throws IOException {
        dev.calibquant.io.OutputFile.write(csv, out -> {
            PrintWriter w = new PrintWriter(new java.io.OutputStreamWriter(out, java.nio.charset.StandardCharsets.UTF_8));
            w.println("batch,calibquant_1bit_us,one_bit_floor_us,fp16_us,fp16_floor_us,sdpa_us,sdpa_anchor_us,paper_ref_anchor_us,quantize_us,quantize_gbs,copy_gbs,calibration_mode,work_items,kernel_load_ms,ptx_target,device,calibquant_1bit_graph_us,calibquant_1bit_host_us,calibquant_1bit_call_us,calibquant_2bit_us,two_bit_floor_us,calibquant_4bit_us,four_bit_floor_us,date");
            for (DecodeBenchmark.Row row : r.rows()) {
                double[] anchor = ANCHORS.getOrDefault(row.batch(), new double[] {Double.NaN, Double.NaN});
                w.printf("%d,%.2f,%.2f,%.2f,%.2f,%s,%.1f,%.0f,%.2f,%.0f,%.0f,%d,%d,%.0f,%s,%s,%.2f,%.2f,%.2f,%.2f,%.2f,%.2f,%.2f,%s%n", row.batch(), row.calibQuantUs(),
                        row.oneBitFloorUs(), row.fp16Us(), row.fp16FloorUs(),
                        sdpaUs.containsKey(row.batch()) ? String.format("%.2f", sdpaUs.get(row.batch())) : "",
                        anchor[0], anchor[1], row.quantizeUs(), row.quantizeGBs(), r.copyGBs(), row.calibrationMode(),
                        row.workItems(), r.kernelLoadMs(), r.target(), r.device().replace(',', ' '), row.calibQuantGraphUs(),
                        row.calibQuantHostUs(), row.calibQuantCallUs(), row.twoBitUs(), row.twoBitFloorUs(),
                        row.fourBitUs(), row.fourBitFloorUs(), LocalDate.now());
            }
            w.flush();
            if (w.checkError()) {
                throw new IOException("write failed");
            }
        });
    }

    private record Replay(DecodeBenchmark.Report report, Map<Integer, Double> sdpaUs, Recorded recorded) {}

    private static Replay readCsv(Path file) throws IOException {
        java.util.Optional<String> notAFile = dev.calibquant.io.InputFile.whyNotARegularFile(file);
        if (notAFile.isPresent()) {
            throw new IOException(notAFile.get() + ", not a CSV written by calibquant bench --csv");
        }
        List<String> lines;
        try {
            lines = Files.readAllLines(file, java.nio.charset.StandardCharsets.UTF_8);
        } catch (java.nio.charset.MalformedInputException e) {
            throw new IOException(file + " is not text: not a CSV written by calibquant bench --csv");
        }
        if (lines.isEmpty() || !lines.getFirst().startsWith("batch,calibquant_1bit_us,")) {
            throw new IOException(file + " is not a CSV written by calibquant bench --csv (its first line should "
                    + "start with \"batch,calibquant_1bit_us,\"" + (lines.isEmpty() ? "; the file is empty)" : ")"));
        }
        if (lines.stream().skip(1).allMatch(String::isBlank)) {
            throw new IOException(file + " holds the header of a bench CSV but no rows");
        }
        try {
            return parseCsv(file, lines);
        } catch (NumberFormatException e) {
            String value = e.getMessage() == null ? "" : e.getMessage().replaceFirst("^For input string: ", "");
            throw new IOException(file + ": a row of the bench CSV holds " + printable(value) + " where a number "
                    + "belongs");
        } catch (ArrayIndexOutOfBoundsException e) {
            throw new IOException(file + ": a row of the bench CSV is malformed");
        } catch (java.time.format.DateTimeParseException e) {
            throw new IOException(file + ": a row of the bench CSV holds " + printable(e.getParsedString())
                    + " where a date (yyyy-mm-dd) belongs");
        }
    }

    /** A value from the user's file as a message may show it: control characters as '?', at most 40 characters. */
    static String printable(String value) {
        String s = value.codePoints().map(c -> Character.isISOControl(c) ? '?' : c)
                .collect(StringBuilder::new, StringBuilder::appendCodePoint, StringBuilder::append).toString();
        return s.length() <= 40 ? s : s.substring(0, 40) + "… (" + s.length() + " characters)";
    }

    private static Replay parseCsv(Path file, List<String> lines) throws IOException {
        List<DecodeBenchmark.Row> rows = new java.util.ArrayList<>();
        Map<Integer, Double> sdpaUs = new TreeMap<>();
        String[] last = null;
        for (String line : lines.subList(1, lines.size())) {
            if (line.isBlank()) {
                continue;
            }
            String[] f = line.split(",", -1);
            // older records lack some of the graph, host and call columns (16 to 19), the 2- and 4-bit ones (23), or
            // the date (24)
            if (f.length < 16 || (f.length > 19 && f.length != 23 && f.length != 24)) {
                throw new IOException(file + ": expected 16 to 19, 23 or 24 columns, found " + f.length + " in: "
                        + printable(line));
            }
            int b = Integer.parseInt(f[0]);
            rows.add(new DecodeBenchmark.Row(b, Double.parseDouble(f[1]), Double.parseDouble(f[3]), Double.parseDouble(f[8]),
                    Double.parseDouble(f[9]), Double.parseDouble(f[4]), Double.parseDouble(f[2]), Integer.parseInt(f[11]),
                    Integer.parseInt(f[12]), f.length > 16 ? Double.parseDouble(f[16]) : Double.NaN,
                    f.length > 17 ? Double.parseDouble(f[17]) : Double.NaN,
                    f.length > 18 ? Double.parseDouble(f[18]) : Double.NaN, column(f, 19), column(f, 20),
                    column(f, 21), column(f, 22)));
            if (!f[5].isEmpty()) {
                sdpaUs.put(b, Double.parseDouble(f[5]));
            }
            last = f;
        }
        if (last == null) {
            throw new IOException(file + ": no rows");
        }
        boolean current = last.length == 24;
        return new Replay(new DecodeBenchmark.Report(last[15], last[14], Double.parseDouble(last[10]),
                Double.parseDouble(last[13]), rows, "?"), sdpaUs,
                new Recorded(current ? LocalDate.parse(last[23]) : null, current));
    }

    /** Column {@code i} as a number, NaN where the record predates it. */
    private static double column(String[] f, int i) {
        return f.length > i ? Double.parseDouble(f[i]) : Double.NaN;
    }

    private void writeChart(DecodeBenchmark.Report r, Map<Integer, Double> sdpaUs) throws IOException {
        XYSeries one = new XYSeries("CalibQuant 1-bit (this project)");
        XYSeries graph = new XYSeries("CalibQuant 1-bit as a CUDA graph (this project)");
        XYSeries two = new XYSeries("CalibQuant 2-bit (this project)");
        XYSeries four = new XYSeries("CalibQuant 4-bit (this project)");
        XYSeries fp16 = new XYSeries("fp16 decode (this project)");
        XYSeries oneFloor = new XYSeries("1-bit byte floor");
        XYSeries fp16Floor = new XYSeries("fp16 byte floor");
        XYSeries torch = new XYSeries(sdpaUs.isEmpty() ? "PyTorch SDPA fp16 (anchor)" : "PyTorch SDPA fp16 (same run)");
        XYSeries ref = new XYSeries("paper's reference path (anchor)");
        for (DecodeBenchmark.Row row : r.rows()) {
            one.add(row.batch(), row.calibQuantUs());
            if (!Double.isNaN(row.calibQuantGraphUs())) {
                graph.add(row.batch(), row.calibQuantGraphUs());
            }
            if (!Double.isNaN(row.twoBitUs())) {
                two.add(row.batch(), row.twoBitUs());
            }
            if (!Double.isNaN(row.fourBitUs())) {
                four.add(row.batch(), row.fourBitUs());
            }
            fp16.add(row.batch(), row.fp16Us());
            oneFloor.add(row.batch(), row.oneBitFloorUs());
            fp16Floor.add(row.batch(), row.fp16FloorUs());
            double[] anchor = ANCHORS.get(row.batch());
            Double s = sdpaUs.get(row.batch());
            if (s != null) {
                torch.add(row.batch(), s);
            } else if (anchor != null) {
                torch.add(row.batch(), anchor[0]);
            }
            if (anchor != null) {
                ref.add(row.batch(), anchor[1]);
            }
        }
        // each line's colour and dash belong to its series: records older than the 2- and 4-bit rows leave those out
        record Line(XYSeries series, Color color, boolean dashed) {}
        Color red = new Color(0xd62728);
        Color blue = new Color(0x1f77b4);
        Color grey = new Color(0x7f7f7f);
        List<Line> lines = List.of(new Line(one, red, false), new Line(two, new Color(0x9467bd), false),
                new Line(four, new Color(0x8c564b), false), new Line(fp16, blue, false), new Line(oneFloor, red, true),
                new Line(fp16Floor, blue, true), new Line(torch, new Color(0x2ca02c), false), new Line(ref, grey, false),
                new Line(graph, new Color(0xff7f0e), true));
        XYSeriesCollection data = new XYSeriesCollection();
        List<Line> drawn = new java.util.ArrayList<>();
        for (Line line : lines) {
            if (line.series().getItemCount() > 0 || line.series() == one) {
                data.addSeries(line.series());
                drawn.add(line);
            }
        }
        JFreeChart chart = ChartFactory.createXYLineChart("One decode step, one layer (" + r.device() + ")",
                "batch size", "time per step (µs)", data, PlotOrientation.VERTICAL, true, false, false);
        XYPlot plot = chart.getXYPlot();
        LogAxis x = new LogAxis("batch size");
        x.setBase(2);
        x.setTickUnit(new NumberTickUnit(1));
        x.setNumberFormatOverride(new DecimalFormat("0"));
        plot.setDomainAxis(x);
        LogAxis y = new LogAxis("time per step (µs)");
        y.setTickUnit(new NumberTickUnit(1));
        y.setNumberFormatOverride(new DecimalFormat("#,##0.#"));
        plot.setRangeAxis(y);
        plot.setBackgroundPaint(Color.WHITE);
        for (int i = 0; i < drawn.size(); i++) {
            plot.getRenderer().setSeriesPaint(i, drawn.get(i).color());
            plot.getRenderer().setSeriesStroke(i, drawn.get(i).dashed()
                    ? new BasicStroke(1.5f, BasicStroke.CAP_BUTT, BasicStroke.JOIN_MITER, 1, new float[] {6, 4}, 0)
                    : new BasicStroke(2.5f));
        }
        dev.calibquant.io.OutputFile.write(png, out -> ChartUtils.writeChartAsPNG(out, chart, 1000, 640));
    }
}
