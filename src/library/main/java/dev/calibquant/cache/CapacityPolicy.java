package dev.calibquant.cache;

/**
 * How many tokens a layer's full-precision block holds. Growth is geometric (×1.5, rounded up to a quantum of 64
 * tokens), so appending n tokens copies O(n) rows in total, never the whole cache per step.
 */
final class CapacityPolicy {

    static final int QUANTUM = 64;

    private CapacityPolicy() {
    }

    /** Capacity at the end of prefill: the tokens held plus room for at least one decode step. */
    static int initial(int fullTokens) {
        return roundUp(fullTokens + 1);
    }

    /** Capacity to grow a full block to. */
    static int next(int capacity) {
        return roundUp(Math.addExact(capacity, Math.max(1, capacity / 2)));
    }

    private static int roundUp(int tokens) {
        return Math.multiplyExact(Math.ceilDiv(tokens, QUANTUM), QUANTUM);
    }
}
