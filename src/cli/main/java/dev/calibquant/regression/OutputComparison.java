package dev.calibquant.regression;

import java.util.Locale;

/**
 * Compares one output of a run with its recording: every element finite, the same element count, then (unless the
 * values are bit-identical) each sampled element and the two sums within the bounds of {@link OutputKind}. The
 * verdict carries the largest error as a fraction of its bound and where it was.
 */
public final class OutputComparison {

    /**
     * @param worstRatio the largest |difference| / bound over the samples and sums (infinite for a NaN, a count
     *     mismatch, or a difference where the bound is 0)
     * @param where the element or checksum of {@code worstRatio}, e.g. {@code attention[1234]}
     * @param detail the difference and its bound there
     */
    public record Verdict(boolean passed, double worstRatio, String where, String detail) {}

    private OutputComparison() {}

    public static Verdict compare(Expectations.Output recorded, ObservedOutput now) {
        String name = now.name();
        float[] v = now.values();
        for (int i = 0; i < v.length; i++) {
            if (!Float.isFinite(v[i])) {
                return new Verdict(false, Double.POSITIVE_INFINITY, name + "[" + i + "]", "is " + v[i]);
            }
        }
        if (v.length != recorded.count()) {
            return new Verdict(false, Double.POSITIVE_INFINITY, name, v.length + " elements, recorded "
                    + recorded.count());
        }
        if (Expectations.sha256(v).equals(recorded.sha256())) {
            return new Verdict(true, 0, name, "bit-identical");
        }
        Worst worst = new Worst();
        int[] idx = recorded.sampleIndex();
        for (int k = 0; k < idx.length; k++) {
            int i = idx[k];
            double bound = recorded.kind().combine(recorded.sampleTolerance()[k], now.tolerance()[i]);
            worst.offer(Math.abs((double) v[i] - recorded.sampleValue()[k]), bound, name + "[" + i + "]",
                    v[i], recorded.sampleValue()[k]);
        }
        double sum = 0;
        double sumAbs = 0;
        double sumTol = 0;
        for (int i = 0; i < v.length; i++) {
            sum += v[i];
            sumAbs += Math.abs(v[i]);
            sumTol += now.tolerance()[i];
        }
        double rounding = 2.0 * v.length * 0x1p-53 * Math.max(sumAbs, recorded.sumAbs());
        double sumBound = recorded.sumTolerance() + sumTol + rounding;
        worst.offer(Math.abs(sum - recorded.sum()), sumBound, "sum of " + name, sum, recorded.sum());
        worst.offer(Math.abs(sumAbs - recorded.sumAbs()), sumBound, "sum of |" + name + "|", sumAbs, recorded.sumAbs());
        return new Verdict(worst.ratio <= 1, worst.ratio, worst.where, worst.detail);
    }

    private static final class Worst {
        double ratio = -1;
        String where;
        String detail;

        void offer(double error, double bound, String at, double now, double recorded) {
            double r = error == 0 ? 0 : bound > 0 ? error / bound : Double.POSITIVE_INFINITY;
            if (r > ratio) {
                ratio = r;
                where = at;
                detail = String.format(Locale.ROOT, "%s is %.9g, recorded %.9g: off by %.3g, bound %.3g", at, now,
                        recorded, error, bound);
            }
        }
    }
}
