package dev.calibquant.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;

/**
 * Bad files given to the subcommands that read them, as a user would give them: every refusal is one line on stderr
 * naming the file, a non-zero exit code, and no stack trace (issue: they printed 12–30 line traces). Runs without a
 * GPU: these inputs are checked before any device work.
 */
class BadInputWalkTest {
    @TempDir
    Path dir;

    record Result(int code, String out, String err) {}

    /** Runs the command as {@code main} does, with the process's stdout and stderr captured. */
    private static Result run(String... args) {
        java.io.PrintStream stdout = System.out;
        java.io.PrintStream stderr = System.err;
        java.io.ByteArrayOutputStream o = new java.io.ByteArrayOutputStream();
        java.io.ByteArrayOutputStream e = new java.io.ByteArrayOutputStream();
        System.setOut(new java.io.PrintStream(o, true, StandardCharsets.UTF_8));
        System.setErr(new java.io.PrintStream(e, true, StandardCharsets.UTF_8));
        try {
            CommandLine cl = CalibQuantCli.commandLine(); // its writers wrap the captured streams
            int code = cl.execute(args);
            cl.getOut().flush();
            cl.getErr().flush();
            return new Result(code, o.toString(StandardCharsets.UTF_8), e.toString(StandardCharsets.UTF_8));
        } finally {
            System.setOut(stdout);
            System.setErr(stderr);
        }
    }

    /** The bad-input family: name → a path holding it. */
    private Map<String, Path> badFiles() throws Exception {
        Map<String, Path> files = new LinkedHashMap<>();
        files.put("missing", dir.resolve("missing.csv"));
        files.put("directory", Files.createDirectory(dir.resolve("a-dir")));
        files.put("empty", Files.createFile(dir.resolve("empty")));
        files.put("random text", Files.writeString(dir.resolve("random.txt"), "hello, world\nnot, what, you, want\n"));
        files.put("binary", Files.write(dir.resolve("binary.bin"), new byte[] {(byte) 0xff, (byte) 0xfe, 0, 1, 2,
            (byte) 0xc3, 0x28, 10, 0}));
        files.put("json {}", Files.writeString(dir.resolve("object.json"), "{}"));
        files.put("bench header only", Files.writeString(dir.resolve("header.csv"),
                "batch,calibquant_1bit_us,one_bit_floor_us\n"));
        files.put("bench row malformed", Files.writeString(dir.resolve("malformed.csv"),
                "batch,calibquant_1bit_us,x\nnot-a-number,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16\n"));
        files.put("budget CSV", Files.writeString(dir.resolve("budget.csv"),
                "path,sequences,layer_step_us\nfp16,206,1002.1\n1-bit,1331,1174.5\n"));
        return files;
    }

    private static void assertOneLineRefusal(String what, Result r, String file) {
        assertThat(r.code()).as(what + ": exit code; stderr: " + r.err()).isNotZero();
        String err = r.err().strip();
        assertThat(err).as(what + ": stderr").isNotEmpty().doesNotContain("\tat ").doesNotContain("Exception in thread")
                .doesNotContain("Caused by").doesNotContain("REDACTED");
        assertThat(err.lines().count()).as(what + ": one line: " + err).isEqualTo(1);
        assertThat(err).as(what).contains(Path.of(file).getFileName().toString());
    }

    @Test
    void benchFromCsvRefusesEveryBadFileInOneLine() throws Exception {
        for (Map.Entry<String, Path> f : badFiles().entrySet()) {
            Result r = run("bench", "--from-csv", f.getValue().toString());
            assertOneLineRefusal("bench --from-csv " + f.getKey(), r, f.getValue().toString());
        }
    }

    @Test
    void regressionExpectationsRefusesEveryBadFileInOneLine() throws Exception {
        for (Map.Entry<String, Path> f : badFiles().entrySet()) {
            Result r = run("selftest", "--regression", "--expectations", f.getValue().toString());
            assertOneLineRefusal("selftest --regression --expectations " + f.getKey(), r, f.getValue().toString());
        }
    }

    @Test
    void badBatchSizesAreRefusedBeforeLookingForAGpu() {
        for (String batches : new String[] {"-1,0", "0", "1,70000"}) {
            Result r = run("bench", "--batches", batches);
            assertThat(r.code()).as(batches).isEqualTo(2);
            assertThat(r.err()).as(batches).startsWith("--batches takes batch sizes from 1 to 65536").doesNotContain("needs a GPU");
        }
    }

    @Test
    void aFailureShowsItsStackTraceOnlyWithDebug() throws Exception {
        Path missing = dir.resolve("nope.csv");
        assertThat(run("bench", "--from-csv", missing.toString()).err()).doesNotContain("\tat ");
        Result debug = run("--debug", "bench", "--from-csv", missing.toString());
        assertThat(debug.code()).isEqualTo(1);
        assertThat(debug.err()).contains("nope.csv: no such file").contains("\tat ");
    }
}
