package dev.calibquant.cli;

import dev.calibquant.profiling.Nvtx;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/** The {@code calibquant} command: entry point of the executable jar. */
@Command(name = "calibquant", mixinStandardHelpOptions = true, version = "calibquant 0.1.0",
        description = "CalibQuant for Java: 1-bit visual KV-cache quantization on the JVM.",
        subcommands = {DemoCommand.class, InfoCommand.class, SelftestCommand.class, BenchCommand.class, EvalCommand.class, CommandLine.HelpCommand.class})
public final class CalibQuantCli implements Runnable {

    /** Sets the switch while the command line is parsed: before any GPU code runs and reads it (once). */
    @Option(names = "--nvtx", scope = CommandLine.ScopeType.INHERIT, description = "Name the GPU work with NVTX "
            + "ranges for Nsight Systems / Nsight Compute (domain calibquant), also without a profiler attached; the "
            + "same as -Dcalibquant.nvtx=true.")
    void nvtx(boolean on) {
        if (on) {
            System.setProperty(Nvtx.SWITCH_PROPERTY, "true");
        }
    }

    /** With {@code --debug}, a failure also prints its stack trace (after the one line). */
    @Option(names = "--debug", scope = CommandLine.ScopeType.INHERIT, description = "On a failure, print the stack "
            + "trace after the one-line message.")
    boolean debug;

    @Override
    public void run() {
        new CommandLine(this).usage(System.out);
    }

    /**
     * The command line as {@link #main} runs it: a failure that reaches it is one line on stderr,
     * {@code calibquant SUBCOMMAND: what went wrong}, and exit code 1 (a stack trace only with {@code --debug}).
     */
    public static CommandLine commandLine() {
        CalibQuantCli root = new CalibQuantCli();
        CommandLine cl = new CommandLine(root);
        cl.setExecutionExceptionHandler((e, command, parsed) -> {
            java.io.PrintWriter err = cl.getErr(); // the root's writer: what the caller set for the whole command
            err.println(command.getCommandSpec().qualifiedName() + ": " + oneLine(e));
            if (root.debug || Boolean.getBoolean("calibquant.debug")) {
                e.printStackTrace(err);
            }
            err.flush();
            return 1;
        });
        return cl;
    }

    /** The failure in one line, in the user's terms: the path and what is wrong with it, not the exception's type. */
    static String oneLine(Throwable e) {
        if (e instanceof java.nio.file.NoSuchFileException f) {
            return f.getFile() + ": no such file";
        }
        if (e instanceof java.nio.file.AccessDeniedException f) {
            return f.getFile() + ": permission denied";
        }
        if (e instanceof java.nio.file.FileSystemException f && f.getReason() != null) {
            return f.getFile() + ": " + f.getReason().toLowerCase(java.util.Locale.ROOT);
        }
        String message = e.getMessage();
        if (message == null || message.isBlank()) {
            return e.getClass().getSimpleName();
        }
        return message.lines().findFirst().orElse(message).strip();
    }

    public static void main(String[] args) {
        System.exit(commandLine().execute(args));
    }
}
