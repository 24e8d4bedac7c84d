package dev.calibquant.io;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.BasicFileAttributes;
import java.nio.file.attribute.PosixFileAttributeView;
import java.nio.file.attribute.PosixFilePermission;
import java.util.Set;
import java.util.concurrent.ThreadLocalRandom;

/**
 * How every command writes a file the user asked for: whole or not at all, the way a shell redirection would place it.
 *
 * <ul>
 *   <li>A symbolic link is written through: its target gets the content, the link stays a link.</li>
 *   <li>A path that exists and is not a regular file (a directory, a device, a FIFO, a socket) is refused with one
 *       line naming it, and nothing changes.</li>
 *   <li>The content goes to a hidden temporary file beside the target and replaces it in one rename, so a failure half
 *       way leaves the old file (or none) and no partial one. A new file gets the permissions the process's umask
 *       gives any new file (0644 typically); a replaced file keeps its own.</li>
 *   <li>Every message names the user's path, never the temporary file.</li>
 * </ul>
 */
public final class OutputFile {

    /** Writes the content to a stream (closed by the caller of this interface). */
    @FunctionalInterface
    public interface Content {
        void writeTo(OutputStream out) throws IOException;
    }

    private static final int MAX_LINKS = 40;

    private OutputFile() {}

    /**
     * Writes {@code content} to {@code path} as described above.
     *
     * @throws IOException with a message that names {@code path}; nothing was written then
     */
    public static void write(Path path, Content content) throws IOException {
        Path target = target(path);
        Path directory = target.toAbsolutePath().getParent();
        if (directory == null || !Files.isDirectory(directory)) {
            throw new IOException(path + ": no such directory " + directory);
        }
        Set<PosixFilePermission> keep = null;
        if (Files.exists(target, LinkOption.NOFOLLOW_LINKS)) {
            BasicFileAttributes a = Files.readAttributes(target, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
            if (!a.isRegularFile()) {
                throw new IOException(path + " is " + kind(a) + ", not a regular file: nothing written");
            }
            PosixFileAttributeView posix = Files.getFileAttributeView(target, PosixFileAttributeView.class);
            keep = posix == null ? null : posix.readAttributes().permissions();
        }
        Path temporary = temporaryBeside(target, path);
        try {
            try (OutputStream out = Files.newOutputStream(temporary, StandardOpenOption.WRITE,
                    StandardOpenOption.TRUNCATE_EXISTING)) {
                content.writeTo(out);
            }
            if (keep != null) {
                Files.setPosixFilePermissions(temporary, keep);
            }
            try {
                Files.move(temporary, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            } catch (AtomicMoveNotSupportedException e) {
                Files.move(temporary, target, StandardCopyOption.REPLACE_EXISTING);
            }
        } catch (IOException e) {
            IOException named = new IOException("cannot write " + path + ": " + reason(e), e);
            try {
                Files.deleteIfExists(temporary);
            } catch (IOException suppressed) {
                named.addSuppressed(suppressed);
            }
            throw named;
        } catch (RuntimeException | Error e) {
            Files.deleteIfExists(temporary);
            throw e;
        }
    }

    /** Where the bytes go: {@code path}, or the file its chain of symbolic links ends at (which may not exist yet). */
    static Path target(Path path) throws IOException {
        Path p = path;
        for (int i = 0; i < MAX_LINKS && Files.isSymbolicLink(p); i++) {
            Path link = Files.readSymbolicLink(p);
            Path parent = p.toAbsolutePath().getParent();
            p = parent == null ? link : parent.resolve(link);
        }
        if (Files.isSymbolicLink(p)) {
            throw new IOException(path + ": too many levels of symbolic links");
        }
        return p;
    }

    /** A new empty file beside {@code target}, created as any new file is (so the umask decides its mode). */
    private static Path temporaryBeside(Path target, Path shown) throws IOException {
        Path directory = target.toAbsolutePath().getParent();
        for (int attempt = 0; ; attempt++) {
            Path candidate = directory.resolve("." + target.getFileName() + "."
                    + Long.toHexString(ThreadLocalRandom.current().nextLong() >>> 1) + ".partial");
            try {
                return Files.createFile(candidate);
            } catch (FileAlreadyExistsException e) {
                if (attempt == 10) {
                    throw new IOException("cannot write " + shown + ": no free temporary name beside it", e);
                }
            } catch (IOException e) {
                throw new IOException("cannot write " + shown + ": " + reason(e), e);
            }
        }
    }

    private static String kind(BasicFileAttributes a) {
        if (a.isDirectory()) {
            return "a directory";
        }
        return a.isOther() ? "a device, FIFO or socket" : "not a regular file";
    }

    /** The cause in words, without the temporary file's name. */
    private static String reason(IOException e) {
        if (e instanceof java.nio.file.AccessDeniedException) {
            return "permission denied";
        }
        if (e instanceof java.nio.file.NoSuchFileException) {
            return "no such file or directory";
        }
        if (e instanceof java.nio.file.FileSystemException f && f.getReason() != null) {
            return f.getReason();
        }
        String m = e.getMessage();
        return m == null ? e.getClass().getSimpleName() : m.replaceAll("\\S*\\.partial", "the file");
    }
}
