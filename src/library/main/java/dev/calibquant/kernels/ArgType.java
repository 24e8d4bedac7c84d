package dev.calibquant.kernels;

import java.util.Arrays;

/**
 * Type of one kernel argument, as Triton's signature names it ({@code "*fp16"}, {@code "i32"}, ...), with the PTX
 * parameter type it compiles to and the bytes it takes in a launch's argument buffer.
 */
public enum ArgType {
    PTR_FP16("*fp16"), PTR_BF16("*bf16"), PTR_FP32("*fp32"), PTR_U8("*u8"), PTR_I32("*i32"), PTR_I64("*i64"),
    I32("i32"), I64("i64"), FP32("fp32");

    private final String tritonName;

    ArgType(String tritonName) {
        this.tritonName = tritonName;
    }

    public String tritonName() {
        return tritonName;
    }

    public boolean isPointer() {
        return tritonName.startsWith("*");
    }

    /** Bytes of the value in the launch argument buffer: scalars go by exact width, pointers are 64-bit. */
    public int byteSize() {
        return switch (this) {
            case I32, FP32 -> 4;
            default -> 8;
        };
    }

    /** The PTX {@code .param} type Triton emits for this argument. */
    public String ptxParamType() {
        return switch (this) {
            case I32 -> "u32";
            case FP32 -> "f32";
            default -> "u64";
        };
    }

    /** Whether a PTX {@code .param} type (as written after the dot) can carry this argument. */
    public boolean matchesPtx(String ptxType) {
        return switch (this) {
            case I32 -> ptxType.equals("u32") || ptxType.equals("b32") || ptxType.equals("s32");
            case FP32 -> ptxType.equals("f32") || ptxType.equals("b32");
            default -> ptxType.equals("u64") || ptxType.equals("b64") || ptxType.equals("s64");
        };
    }

    public static ArgType fromTriton(String name) {
        return Arrays.stream(values())
                .filter(t -> t.tritonName.equals(name))
                .findFirst()
                .orElseThrow(() -> new KernelManifestException("unknown kernel argument type '" + name + "'"));
    }
}
