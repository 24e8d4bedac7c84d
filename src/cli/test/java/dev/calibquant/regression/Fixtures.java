package dev.calibquant.regression;

import java.util.Random;

/** Observed outputs made up on the CPU, for the comparison logic. */
final class Fixtures {
    private Fixtures() {}

    /** {@code n} random normal fp32 values, each with bound {@code tol}. */
    static ObservedOutput output(String name, OutputKind kind, int n, double tol, Random random) {
        float[] v = new float[n];
        double[] t = new double[n];
        for (int i = 0; i < n; i++) {
            v[i] = kind == OutputKind.CODES ? random.nextInt(2) : (float) random.nextGaussian();
            t[i] = tol;
        }
        return new ObservedOutput(name, kind, v, t);
    }

    /** A copy of {@code o} with element {@code i} moved by {@code delta}. */
    static ObservedOutput moved(ObservedOutput o, int i, double delta) {
        float[] v = o.values().clone();
        v[i] = (float) (v[i] + delta);
        return new ObservedOutput(o.name(), o.kind(), v, o.tolerance().clone());
    }
}
