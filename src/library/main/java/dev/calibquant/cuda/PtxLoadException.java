package dev.calibquant.cuda;

/** A PTX module could not be loaded: carries the driver's JIT error log and, for a too-new PTX ISA, the driver it needs. */
public final class PtxLoadException extends CudaException {
    private final String jitLog;

    public PtxLoadException(String call, int code, String errorName, String message, String jitLog) {
        super(call, code, errorName, message + (jitLog.isBlank() ? "" : "\nJIT log:\n" + jitLog.strip()));
        this.jitLog = jitLog;
    }

    /** What the driver's PTX JIT compiler wrote about the failure (may be empty). */
    public String jitLog() {
        return jitLog;
    }
}
