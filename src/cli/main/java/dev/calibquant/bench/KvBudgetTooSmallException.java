package dev.calibquant.bench;

/** A KV memory budget smaller than one whole sequence (every layer of it): it holds no sequence at all. */
public final class KvBudgetTooSmallException extends IllegalArgumentException {
    private final long budgetBytes;
    private final long sequenceBytes;

    public KvBudgetTooSmallException(String what, long budgetBytes, long sequenceBytes, int layers) {
        super("a KV budget of " + budgetBytes + " bytes holds no " + what + " sequence: one takes " + sequenceBytes
                + " bytes over its " + layers + " layers");
        this.budgetBytes = budgetBytes;
        this.sequenceBytes = sequenceBytes;
    }

    public long budgetBytes() {
        return budgetBytes;
    }

    public long sequenceBytes() {
        return sequenceBytes;
    }
}
