package dev.calibquant.cli;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.profiling.Nvtx;
import org.junit.jupiter.api.Test;
import picocli.CommandLine;

class CalibQuantCliTest {
    @Test
    void helpExitsZero() {
        assertThat(new CommandLine(new CalibQuantCli()).execute("--help")).isZero();
    }

    @Test
    void theNvtxSwitchSetsThePropertyBeforeOrAfterTheSubcommand() {
        String before = System.getProperty(Nvtx.SWITCH_PROPERTY);
        try {
            for (String[] args : new String[][] {{"--nvtx", "info"}, {"bench", "--nvtx"}, {"selftest", "--nvtx"}}) {
                System.clearProperty(Nvtx.SWITCH_PROPERTY);
                new CommandLine(new CalibQuantCli()).parseArgs(args);
                assertThat(System.getProperty(Nvtx.SWITCH_PROPERTY)).as(String.join(" ", args)).isEqualTo("true");
            }
            System.clearProperty(Nvtx.SWITCH_PROPERTY);
            new CommandLine(new CalibQuantCli()).parseArgs("info");
            assertThat(System.getProperty(Nvtx.SWITCH_PROPERTY)).isNull();
        } finally {
            if (before == null) {
                System.clearProperty(Nvtx.SWITCH_PROPERTY);
            } else {
                System.setProperty(Nvtx.SWITCH_PROPERTY, before);
            }
        }
    }
}
