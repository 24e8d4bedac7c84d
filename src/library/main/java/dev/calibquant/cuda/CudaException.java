package dev.calibquant.cuda;

/** A CUDA driver call failed: names the call, the CUresult code and the driver's name and text for it. */
public class CudaException extends RuntimeException {
    private final String call;
    private final int code;
    private final String errorName;

    /** {@code message} is the whole text, e.g. built by {@link #describe}. */
    protected CudaException(String call, int code, String errorName, String message) {
        super(message);
        this.call = call;
        this.code = code;
        this.errorName = errorName;
    }

    static String describe(String call, int code, String errorName, String errorString) {
        return call + " failed: " + errorName + " (" + code + "): " + errorString;
    }

    /** The driver function that failed, e.g. {@code cuMemAlloc_v2}. */
    public String call() {
        return call;
    }

    /** The CUresult value. */
    public int code() {
        return code;
    }

    /** The CUresult name, e.g. {@code CUDA_ERROR_OUT_OF_MEMORY}. */
    public String errorName() {
        return errorName;
    }
}
