package dev.calibquant.regression;

import java.util.Objects;

/**
 * One output of one regression case as a GPU run produced it: the values (fp32, or small integers held exactly as
 * float) and, per element, the run's own bound from the arithmetic (see {@link OutputKind}).
 */
public record ObservedOutput(String name, OutputKind kind, float[] values, double[] tolerance) {
    public ObservedOutput {
        Objects.requireNonNull(name, "name");
        Objects.requireNonNull(kind, "kind");
        if (values.length != tolerance.length) {
            throw new IllegalArgumentException(name + ": " + values.length + " values but " + tolerance.length
                    + " tolerances");
        }
        if (values.length == 0) {
            throw new IllegalArgumentException(name + ": an output needs at least one element");
        }
        for (int i = 0; i < tolerance.length; i++) {
            if (!(tolerance[i] >= 0) || Double.isInfinite(tolerance[i])) {
                throw new IllegalArgumentException(name + ": tolerance[" + i + "] is " + tolerance[i]
                        + "; a bound is finite and >= 0");
            }
        }
    }

    public int count() {
        return values.length;
    }
}
