package dev.calibquant.model;

/**
 * The random numbers of the scene task, defined bit for bit so that {@code tools/model/scenes.py} draws the same
 * ones: sample {@code i} of a task seeded {@code seed} is the SplitMix64 stream whose state starts at the
 * {@code i}-th output of SplitMix64({@code seed}). Counter-based, so Python can compute every draw of every sample
 * at once.
 */
public final class SplitMix64 {
    public static final long GAMMA = 0x9E3779B97F4A7C15L;

    private SplitMix64() {
    }

    /** The SplitMix64 output function. */
    public static long mix(long z) {
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** The state sample {@code index} starts from. */
    public static long sampleState(long seed, long index) {
        return mix(seed + (index + 1) * GAMMA);
    }

    /** Draw {@code k} (from 0) of the stream that starts at {@code state}. */
    public static long draw(long state, int k) {
        return mix(state + (k + 1) * GAMMA);
    }

    /** A number in {@code [0, n)} from the top 32 bits of a draw (multiply-shift; no rejection, by definition). */
    public static int below(long draw, int n) {
        if (n <= 0) {
            throw new IllegalArgumentException("below(n) needs n > 0, got " + n);
        }
        return (int) (((draw >>> 32) * n) >>> 32);
    }
}
