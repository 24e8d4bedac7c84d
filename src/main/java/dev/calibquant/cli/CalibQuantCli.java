package dev.calibquant.cli;

import picocli.CommandLine;
import picocli.CommandLine.Command;

/** The {@code calibquant} command: entry point of the executable jar. */
@Command(name = "calibquant", mixinStandardHelpOptions = true, version = "calibquant 0.1.0",
        description = "CalibQuant for Java: 1-bit visual KV-cache quantization on the JVM.",
        subcommands = {DemoCommand.class, InfoCommand.class, SelftestCommand.class, BenchCommand.class, EvalCommand.class, CommandLine.HelpCommand.class})
public final class CalibQuantCli implements Runnable {

    @Override
    public void run() {
        new CommandLine(this).usage(System.out);
    }

    public static void main(String[] args) {
        System.exit(new CommandLine(new CalibQuantCli()).execute(args));
    }
}
