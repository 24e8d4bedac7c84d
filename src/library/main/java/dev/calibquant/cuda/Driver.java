package dev.calibquant.cuda;

import static dev.calibquant.cuda.bindings.CudaDriver.C_INT;
import static dev.calibquant.cuda.bindings.CudaDriver.C_POINTER;

import dev.calibquant.cuda.bindings.CudaDriver;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/** The one place that turns CUresult codes into exceptions. Package-private: only {@code cuda/} calls the driver. */
final class Driver {
    static final int CUDA_SUCCESS = 0;
    static final int CUDA_ERROR_OUT_OF_MEMORY = 2;
    static final int CUDA_ERROR_NOT_INITIALIZED = 3;
    static final int CUDA_ERROR_NO_DEVICE = 100;
    static final int CUDA_ERROR_INVALID_PTX = 218;
    static final int CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222;
    static final int CUDA_ERROR_JIT_COMPILER_NOT_FOUND = 221;
    static final int CUDA_ERROR_NOT_READY = 600;

    private Driver() {}

    static void check(int result, String call) {
        if (result != CUDA_SUCCESS) {
            throw error(result, call);
        }
    }

    static CudaException error(int result, String call) {
        String name = errorName(result);
        String text = errorString(result);
        String message = CudaException.describe(call, result, name, text);
        if (result == CUDA_ERROR_OUT_OF_MEMORY) {
            return new CudaOutOfMemoryException(call, result, name, message);
        }
        return new CudaException(call, result, name, message);
    }

    static String errorName(int result) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment p = arena.allocate(C_POINTER);
            if (CudaDriver.cuGetErrorName(result, p) != CUDA_SUCCESS || p.get(C_POINTER, 0).equals(MemorySegment.NULL)) {
                return "CUDA_ERROR_" + result;
            }
            return p.get(C_POINTER, 0).getString(0);
        }
    }

    static String errorString(int result) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment p = arena.allocate(C_POINTER);
            if (CudaDriver.cuGetErrorString(result, p) != CUDA_SUCCESS || p.get(C_POINTER, 0).equals(MemorySegment.NULL)) {
                return "unknown error";
            }
            return p.get(C_POINTER, 0).getString(0);
        }
    }

    static int readInt(String call, java.util.function.ToIntFunction<MemorySegment> fn) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(C_INT);
            check(fn.applyAsInt(out), call);
            return out.get(C_INT, 0);
        }
    }

    /**
     * The CUDA release that introduced a PTX ISA version (8.7 → 12.8), as major * 1000 + minor * 10 like
     * {@code cuDriverGetVersion}: a driver older than that refuses the module.
     */
    static int cudaVersionForPtx(int ptxIsa) {
        if (ptxIsa >= 90) {
            return 13000;
        }
        return switch (ptxIsa) {
            case 88 -> 12090;
            case 87 -> 12080;
            case 86 -> 12070;
            case 85 -> 12050;
            case 84 -> 12040;
            case 83 -> 12030;
            case 82 -> 12020;
            case 81 -> 12010;
            case 80 -> 12000;
            case 78 -> 11080;
            default -> ptxIsa < 78 ? 11000 : 12000;
        };
    }

    static String versionText(int cudaVersion) {
        return (cudaVersion / 1000) + "." + (cudaVersion % 1000) / 10;
    }
}
