package dev.calibquant.quant;

/** Element type of full-precision keys, values and queries. Stored little-endian, as PyTorch and CUDA write them. */
public enum DType {
    FP16(2), BF16(2), FP32(4);

    private final int byteSize;

    DType(int byteSize) {
        this.byteSize = byteSize;
    }

    public int byteSize() {
        return byteSize;
    }
}
