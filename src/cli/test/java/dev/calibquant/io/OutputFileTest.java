package dev.calibquant.io;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Every file a command writes goes through {@link OutputFile}: whole or not at all, placed as a shell would. */
class OutputFileTest {
    @TempDir
    Path dir;

    private static void write(Path p, String text) throws IOException {
        OutputFile.write(p, out -> out.write(text.getBytes(StandardCharsets.UTF_8)));
    }

    private List<Path> leftovers() throws IOException {
        try (Stream<Path> files = Files.list(dir)) {
            return files.filter(p -> p.getFileName().toString().endsWith(".partial")).toList();
        }
    }

    @Test
    void aNewFileGetsTheModeAnyNewFileGetsAndNoTemporaryStays() throws IOException {
        Path plain = Files.createFile(dir.resolve("plain")); // what the umask gives a new file here
        Path p = dir.resolve("out.csv");
        write(p, "a,b\n");
        assertThat(Files.readString(p)).isEqualTo("a,b\n");
        assertThat(Files.getPosixFilePermissions(p)).isEqualTo(Files.getPosixFilePermissions(plain));
        assertThat(leftovers()).isEmpty();
    }

    @Test
    void aRegularFileIsReplacedWholeAndKeepsItsMode() throws IOException {
        Path p = Files.writeString(dir.resolve("out.json"), "old");
        Files.setPosixFilePermissions(p, PosixFilePermissions.fromString("rw-------"));
        write(p, "new");
        assertThat(Files.readString(p)).isEqualTo("new");
        assertThat(PosixFilePermissions.toString(Files.getPosixFilePermissions(p))).isEqualTo("rw-------");
    }

    @Test
    void aSymbolicLinkIsWrittenThroughAndStaysALink() throws IOException {
        Path target = Files.writeString(dir.resolve("target.png"), "old");
        Path link = Files.createSymbolicLink(dir.resolve("link.png"), target.getFileName());
        write(link, "new");
        assertThat(Files.isSymbolicLink(link)).isTrue();
        assertThat(Files.readString(target)).isEqualTo("new");
        Path dangling = Files.createSymbolicLink(dir.resolve("dangling"), dir.resolve("sub-not-yet"));
        write(dangling, "made");
        assertThat(Files.readString(dir.resolve("sub-not-yet"))).isEqualTo("made");
        assertThat(Files.isSymbolicLink(dangling)).isTrue();
        assertThat(leftovers()).isEmpty();
    }

    @Test
    void aDirectoryADeviceAndAFifoAreRefusedNamingThePathAndLeftAsTheyWere() throws Exception {
        Path sub = Files.createDirectory(dir.resolve("sub"));
        assertThatThrownBy(() -> write(sub, "x")).isInstanceOf(IOException.class)
                .hasMessage(sub + " is a directory, not a regular file: nothing written");
        assertThat(Files.isDirectory(sub)).isTrue();
        Path devNull = Path.of("/dev/null");
        Assumptions.assumeTrue(Files.exists(devNull), "no /dev/null here");
        assertThatThrownBy(() -> write(devNull, "x")).isInstanceOf(IOException.class)
                .hasMessageContaining("/dev/null is a device, FIFO or socket, not a regular file");
        assertThat(Files.isRegularFile(devNull)).isFalse();
        Path fifo = dir.resolve("fifo");
        Process mkfifo = new ProcessBuilder("mkfifo", fifo.toString()).start();
        Assumptions.assumeTrue(mkfifo.waitFor() == 0, "mkfifo is not available");
        assertThatThrownBy(() -> write(fifo, "x")).isInstanceOf(IOException.class) // refused, not a hang
                .hasMessageContaining(fifo + " is a device, FIFO or socket");
        assertThat(leftovers()).isEmpty();
    }

    @Test
    void aFailureWhileWritingLeavesTheOldFileAndNamesTheUsersPath() throws IOException {
        Path p = Files.writeString(dir.resolve("kept.txt"), "old");
        assertThatThrownBy(() -> OutputFile.write(p, out -> {
            out.write(1);
            throw new IOException("disk full");
        })).isInstanceOf(IOException.class).hasMessage("cannot write " + p + ": disk full")
                .message().doesNotContain(".partial");
        assertThat(Files.readString(p)).isEqualTo("old");
        assertThat(leftovers()).isEmpty();
        Path missing = dir.resolve("no-such-dir").resolve("out.csv");
        assertThatThrownBy(() -> write(missing, "x")).isInstanceOf(IOException.class)
                .hasMessageStartingWith(missing + ": no such directory");
    }
}
