package dev.calibquant.cli;

import static org.assertj.core.api.Assertions.assertThat;

import org.junit.jupiter.api.Test;
import picocli.CommandLine;

class CalibQuantCliTest {
    @Test
    void helpExitsZero() {
        assertThat(new CommandLine(new CalibQuantCli()).execute("--help")).isZero();
    }
}
