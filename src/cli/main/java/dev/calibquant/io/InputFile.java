package dev.calibquant.io;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Optional;

/** What the commands check of a file they are to read before they open it. */
public final class InputFile {
    private InputFile() {}

    /**
     * Why {@code path} cannot be read as a file's content, or empty when it can be (or does not exist: opening it says
     * so): a directory, or a FIFO, device or socket, which would block or stream forever.
     */
    public static Optional<String> whyNotARegularFile(Path path) {
        if (Files.isDirectory(path)) {
            return Optional.of(path + " is a directory");
        }
        if (Files.exists(path) && !Files.isRegularFile(path)) {
            return Optional.of(path + " is not a regular file (a FIFO, device or socket)");
        }
        return Optional.empty();
    }
}
