package dev.calibquant.cache;

/**
 * A 2-D copy: {@code rows} rows of {@code rowBytes} bytes, row {@code r} read at
 * {@code sourceOffset + r * sourcePitch} and written at {@code targetOffset + r * targetPitch}. The cache moves
 * per-head rows this way ({@code [kvHeads][tokens][headDim]} in, {@code [kvHeads][capacity][headDim]} out), which a
 * device storage can map onto one 2-D memcpy.
 */
public record RowCopy(long sourceOffset, long sourcePitch, long targetOffset, long targetPitch, long rowBytes,
        int rows) {

    public RowCopy {
        if (sourceOffset < 0 || targetOffset < 0 || rowBytes < 0 || rows < 0 || sourcePitch < 0 || targetPitch < 0) {
            throw new IllegalArgumentException("negative field in " + describe(sourceOffset, sourcePitch,
                    targetOffset, targetPitch, rowBytes, rows));
        }
        if (rows > 1 && targetPitch < rowBytes) {
            throw new IllegalArgumentException("target rows would overlap in " + describe(sourceOffset,
                    sourcePitch, targetOffset, targetPitch, rowBytes, rows));
        }
    }

    /** One contiguous run of bytes. */
    public static RowCopy contiguous(long sourceOffset, long targetOffset, long bytes) {
        return new RowCopy(sourceOffset, bytes, targetOffset, bytes, bytes, 1);
    }

    /**
     * Checks that every row lies within a source of {@code sourceSize} and a target of {@code targetSize} bytes.
     *
     * @throws IndexOutOfBoundsException naming the copy and the sizes
     */
    public void checkWithin(long sourceSize, long targetSize) {
        if (rows == 0 || rowBytes == 0) {
            return;
        }
        try {
            long sourceEnd = Math.addExact(Math.addExact(sourceOffset, Math.multiplyExact(rows - 1L, sourcePitch)),
                    rowBytes);
            long targetEnd = Math.addExact(Math.addExact(targetOffset, Math.multiplyExact(rows - 1L, targetPitch)),
                    rowBytes);
            if (sourceEnd > sourceSize || targetEnd > targetSize) {
                throw new IndexOutOfBoundsException(this + " does not fit a source of " + sourceSize
                        + " bytes and a target of " + targetSize + " bytes");
            }
        } catch (ArithmeticException e) {
            throw new IndexOutOfBoundsException(this + " overflows 64-bit offsets");
        }
    }

    public long totalBytes() {
        return rowBytes * rows;
    }

    private static String describe(long sourceOffset, long sourcePitch, long targetOffset, long targetPitch,
            long rowBytes, int rows) {
        return "row copy (" + rows + " rows of " + rowBytes + " bytes, source " + sourceOffset + " + r*"
                + sourcePitch + ", target " + targetOffset + " + r*" + targetPitch + ")";
    }

    @Override
    public String toString() {
        return describe(sourceOffset, sourcePitch, targetOffset, targetPitch, rowBytes, rows);
    }
}
