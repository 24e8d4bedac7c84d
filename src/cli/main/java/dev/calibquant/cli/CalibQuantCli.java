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

    @Override
    public void run() {
        new CommandLine(this).usage(System.out);
    }

    public static void main(String[] args) {
        System.exit(new CommandLine(new CalibQuantCli()).execute(args));
    }
}
