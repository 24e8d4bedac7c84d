package dev.calibquant.io;

import dev.calibquant.quant.DType;

/** The safetensors dtype names this project reads and writes, and the {@link DType} each one is. */
final class SafetensorsDtypes {

    static final String SUPPORTED = "F16, BF16, F32";

    private SafetensorsDtypes() {
    }

    /** The DType for a header name, or null where the name is not one of {@link #SUPPORTED}. */
    static DType fromName(String name) {
        return switch (name) {
            case "F16" -> DType.FP16;
            case "BF16" -> DType.BF16;
            case "F32" -> DType.FP32;
            default -> null;
        };
    }

    static String nameOf(DType dtype) {
        return switch (dtype) {
            case FP16 -> "F16";
            case BF16 -> "BF16";
            case FP32 -> "F32";
        };
    }
}
