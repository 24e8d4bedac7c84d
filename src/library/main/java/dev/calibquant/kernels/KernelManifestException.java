package dev.calibquant.kernels;

/** The shipped kernel manifest or a PTX file is missing, malformed, or disagrees with itself. */
public class KernelManifestException extends RuntimeException {
    public KernelManifestException(String message) {
        super(message);
    }

    public KernelManifestException(String message, Throwable cause) {
        super(message, cause);
    }
}
