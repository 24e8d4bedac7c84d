package dev.calibquant.cuda;

/** The shipped kernels cannot run on this device (or target); the message says why. */
public final class UnsupportedDeviceException extends RuntimeException {
    public UnsupportedDeviceException(String message) {
        super(message);
    }
}
