package dev.calibquant.quant;

/** A tensor's shape, stride, size or parameter does not match what an operation requires. Nothing was written. */
public class InvalidShapeException extends IllegalArgumentException {
    public InvalidShapeException(String message) {
        super(message);
    }
}
