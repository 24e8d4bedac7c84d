package dev.calibquant.io;

import dev.calibquant.quant.DType;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;

/**
 * One tensor of a safetensors file: its name, element type, shape, and its bytes (little-endian, row-major).
 *
 * <p>{@code data()} is a read-only slice of the file mapping, valid until its reader is closed. It is not aligned to
 * the element size (safetensors does not promise alignment), so read it with the {@code *_UNALIGNED} layouts.
 */
public final class SafetensorsTensor {

    private final String name;
    private final DType dtype;
    private final long[] shape;
    private final MemorySegment data;

    SafetensorsTensor(String name, DType dtype, long[] shape, MemorySegment data) {
        this.name = name;
        this.dtype = dtype;
        this.shape = shape.clone();
        this.data = data;
    }

    public String name() {
        return name;
    }

    public DType dtype() {
        return dtype;
    }

    public long[] shape() {
        return shape.clone();
    }

    public int rank() {
        return shape.length;
    }

    public long dim(int axis) {
        return shape[axis];
    }

    public long elementCount() {
        long count = 1;
        for (long d : shape) {
            count *= d; // cannot overflow: the reader checked count * element size against the file size
        }
        return count;
    }

    public MemorySegment data() {
        return data;
    }

    @Override
    public String toString() {
        return name + " " + SafetensorsDtypes.nameOf(dtype) + Arrays.toString(shape);
    }
}
