package dev.calibquant.cuda;

/** The GPU path cannot be used on this machine; the message says why (no driver, no device, driver too old, ...). */
public final class CudaUnavailableException extends RuntimeException {
    public CudaUnavailableException(String reason) {
        super(reason);
    }
}
