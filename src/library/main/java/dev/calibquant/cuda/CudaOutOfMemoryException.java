package dev.calibquant.cuda;

/** The device has no room for an allocation ({@code CUDA_ERROR_OUT_OF_MEMORY}); nothing was allocated. */
public final class CudaOutOfMemoryException extends CudaException {
    public CudaOutOfMemoryException(String call, int code, String errorName, String message) {
        super(call, code, errorName, message);
    }
}
