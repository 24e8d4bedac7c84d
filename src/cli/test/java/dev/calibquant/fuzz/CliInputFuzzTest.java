package dev.calibquant.fuzz;

import com.code_intelligence.jazzer.api.FuzzedDataProvider;
import com.code_intelligence.jazzer.junit.FuzzTest;
import dev.calibquant.cli.CalibQuantCli;
import dev.calibquant.regression.Expectations;
import dev.calibquant.regression.ExpectationsFormatException;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * The readers of the files a user hands the CLI, on arbitrary bytes: each reads the file or refuses it its own way
 * (regression expectations: {@link ExpectationsFormatException}; {@code bench --from-csv}: one line on stderr and a
 * non-zero exit code, no stack trace). Anything else is a finding. Regression mode on the committed corpus in every
 * build; {@code JAZZER_FUZZ=1} fuzzes (tools/dev/fuzz.sh).
 */
class CliInputFuzzTest {

    @FuzzTest(maxDuration = "30s")
    void regressionExpectationsReadOrRefuseByName(byte[] bytes) {
        try {
            Expectations.read(new ByteArrayInputStream(bytes));
        } catch (ExpectationsFormatException expected) {
            // refused with the suite's own exception
        }
    }

    @FuzzTest(maxDuration = "30s")
    void benchFromCsvPrintsTheTableOrOneLine(FuzzedDataProvider data) throws IOException {
        // most inputs start like a bench CSV, so the fuzzer reaches the row parser
        String text = (data.consumeBoolean() ? "batch,calibquant_1bit_us,one_bit_floor_us\n" : "")
                + data.consumeRemainingAsString();
        Path file = Files.createTempFile("fuzz", ".csv");
        PrintStream stdout = System.out;
        PrintStream stderr = System.err;
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        try {
            Files.writeString(file, text, StandardCharsets.UTF_8);
            System.setOut(new PrintStream(new ByteArrayOutputStream(), true, StandardCharsets.UTF_8));
            System.setErr(new PrintStream(err, true, StandardCharsets.UTF_8));
            int code = CalibQuantCli.commandLine().execute("bench", "--from-csv", file.toString());
            String said = err.toString(StandardCharsets.UTF_8).lines()
                    .filter(l -> !l.startsWith("INFO: ")) // the fuzzer's own notes as it instruments classes
                    .collect(java.util.stream.Collectors.joining("\n")).strip();
            if (code != 0 && (said.isEmpty() || said.lines().count() != 1 || said.contains("\tat "))) {
                throw new AssertionError("exit " + code + " without one line: " + said);
            }
        } finally {
            System.setOut(stdout);
            System.setErr(stderr);
            Files.deleteIfExists(file);
        }
    }

    @FuzzTest(maxDuration = "30s")
    void evalReadsACaptureOrRefusesInOneLine(byte[] bytes) throws IOException {
        if (bytes.length > 4096) {
            return; // small captures only: a valid one is evaluated, which must stay quick
        }
        Path file = Files.createTempFile("fuzz", ".safetensors");
        java.io.StringWriter err = new java.io.StringWriter();
        try {
            Files.write(file, bytes);
            int code = new picocli.CommandLine(new dev.calibquant.cli.EvalCommand())
                    .setOut(new java.io.PrintWriter(new java.io.StringWriter()))
                    .setErr(new java.io.PrintWriter(err, true)).execute(file.toString());
            String said = err.toString().strip();
            if (code != 0 && (said.isEmpty() || said.lines().count() != 1 || said.contains("\tat "))) {
                throw new AssertionError("exit " + code + " without one line: " + said);
            }
        } finally {
            Files.deleteIfExists(file);
        }
    }

    @FuzzTest(maxDuration = "30s")
    void modelWeightsLoadOrRefuseByName(byte[] bytes) throws IOException {
        Path file = Files.createTempFile("fuzz", ".safetensors");
        try {
            Files.write(file, bytes);
            try {
                dev.calibquant.model.SceneModel.load(file);
            } catch (dev.calibquant.io.SafetensorsFormatException | dev.calibquant.model.WeightsFormatException expected) {
                // refused by name
            }
        } finally {
            Files.deleteIfExists(file);
        }
    }

    @FuzzTest(maxDuration = "30s")
    void kernelManifestParsesOrRefusesByName(byte[] bytes) {
        try {
            dev.calibquant.kernels.KernelManifest.parse(new ByteArrayInputStream(bytes));
        } catch (dev.calibquant.kernels.KernelManifestException expected) {
            // refused by name
        }
    }
}
