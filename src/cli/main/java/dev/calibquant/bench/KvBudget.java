package dev.calibquant.bench;

import dev.calibquant.cache.MemoryUsage;
import java.util.Objects;

/**
 * Decode throughput at a fixed KV memory budget, as arithmetic: how many whole sequences (every layer of each) a
 * budget holds given the bytes one sequence's cache really reserves, how a batch too big for one step is cut into
 * equal sub-batches, and the sequences × steps/s that follow from one layer's step time. Pure; {@link
 * BudgetBenchmark} measures its inputs on the GPU.
 */
public final class KvBudget {
    /** Bytes in a (decimal) gigabyte, the unit of a budget given in GB. */
    public static final long GIGABYTE = 1_000_000_000L;

    private KvBudget() {}

    /** {@code gigabytes} × 10⁹, rounded to whole bytes. */
    public static long bytesOfGigabytes(double gigabytes) {
        if (!Double.isFinite(gigabytes) || gigabytes <= 0) {
            throw new IllegalArgumentException("a KV budget must be a positive number of GB, got " + gigabytes);
        }
        double bytes = Math.rint(gigabytes * GIGABYTE);
        if (bytes < 1 || bytes >= 0x1p63) {
            throw new IllegalArgumentException("a KV budget of " + gigabytes + " GB is not between 1 byte and 2^63 bytes");
        }
        return (long) bytes;
    }

    /**
     * How many whole sequences of {@code path} fit in {@code budgetBytes}.
     *
     * @param perSequence what one sequence reserves over all {@code layers} layers (its cache's own accounting)
     * @throws KvBudgetTooSmallException when not even one sequence fits
     * @throws IllegalArgumentException when a size is not positive, the sequence's bytes do not split evenly over
     *     its layers (every layer reserves the same regions), or more than {@link Integer#MAX_VALUE} sequences fit
     */
    public static Fit fit(String path, long budgetBytes, int layers, MemoryUsage perSequence) {
        Objects.requireNonNull(path, "path");
        Objects.requireNonNull(perSequence, "perSequence");
        if (budgetBytes <= 0 || layers <= 0) {
            throw new IllegalArgumentException("budget and layers must be positive, got " + budgetBytes + " bytes and "
                    + layers + " layers");
        }
        long bytes = perSequence.totalBytes();
        if (bytes <= 0) {
            throw new IllegalArgumentException(path + ": a sequence that holds " + bytes + " bytes cannot be budgeted");
        }
        if (bytes % layers != 0) {
            throw new IllegalArgumentException(path + ": a sequence's " + bytes + " bytes do not split evenly over its "
                    + layers + " layers; every layer should reserve the same");
        }
        long sequences = budgetBytes / bytes;
        if (sequences == 0) {
            throw new KvBudgetTooSmallException(path, budgetBytes, bytes, layers);
        }
        if (sequences > Integer.MAX_VALUE) {
            throw new IllegalArgumentException(path + ": a budget of " + budgetBytes + " bytes holds " + sequences
                    + " sequences, more than one batch can index");
        }
        return new Fit(path, budgetBytes, layers, perSequence, (int) sequences);
    }

    /** The sequences of {@code path} that a budget holds, over all its layers. Made by {@link KvBudget#fit}. */
    public record Fit(String path, long budgetBytes, int layers, MemoryUsage perSequence, int sequences) {
        public Fit {
            Objects.requireNonNull(path, "path");
            long bytes = Objects.requireNonNull(perSequence, "perSequence").totalBytes();
            if (layers <= 0 || sequences <= 0 || bytes <= 0 || bytes % layers != 0 || budgetBytes / bytes != sequences) {
                throw new IllegalArgumentException("inconsistent fit: " + sequences + " sequences of " + bytes
                        + " bytes over " + layers + " layers in " + budgetBytes + " bytes; use KvBudget.fit");
            }
        }

        /** One sequence, all layers. */
        public long sequenceBytes() {
            return perSequence.totalBytes();
        }

        /** One sequence, one layer. */
        public long sequenceLayerBytes() {
            return sequenceBytes() / layers;
        }

        /** All sequences, one layer: what one layer's decode step attends over. */
        public long layerBytes() {
            return sequences * sequenceLayerBytes();
        }

        /** All sequences, all layers: at most the budget. */
        public long usedBytes() {
            return sequences * sequenceBytes();
        }
    }

    /**
     * {@code sequences} cut into the fewest equal sub-batches of at most {@code maxPerStep}: {@code k =
     * ⌈n / max⌉} sub-batches of {@code ⌈n / k⌉} sequences, which cover {@code n} with fewer than {@code k} to spare.
     */
    public static Split split(int sequences, int maxPerStep) {
        if (sequences <= 0 || maxPerStep <= 0) {
            throw new IllegalArgumentException("sequences and the most per step must be positive, got " + sequences
                    + " and " + maxPerStep);
        }
        int k = Math.ceilDiv(sequences, maxPerStep);
        return new Split(sequences, k, Math.ceilDiv(sequences, k));
    }

    /**
     * A batch of {@code sequences} timed as {@code subBatches} steps of {@code subBatchSize} sequences each.
     * {@code subBatches × subBatchSize} may exceed {@code sequences} by less than {@code subBatches}: the time then
     * counts those few extra sequences (it errs slow).
     */
    public record Split(int sequences, int subBatches, int subBatchSize) {
        public Split {
            if (sequences <= 0 || subBatches <= 0 || subBatchSize <= 0
                    || (long) subBatches * subBatchSize < sequences
                    || (long) subBatches * subBatchSize - sequences >= subBatches) {
                throw new IllegalArgumentException("inconsistent split of " + sequences + " sequences into "
                        + subBatches + " × " + subBatchSize + "; use KvBudget.split");
            }
        }

        public boolean whole() {
            return subBatches == 1;
        }

        /** {@code subBatches × subBatchSize}: a long, as it can pass {@link Integer#MAX_VALUE}. */
        public long timedSequences() {
            return (long) subBatches * subBatchSize;
        }

        /** The split whose sub-batches hold at most half as many sequences. */
        public Split halved() {
            if (subBatchSize == 1) {
                throw new IllegalStateException("sub-batches of one sequence cannot be halved");
            }
            return split(sequences, subBatchSize / 2);
        }

        /** One layer's step over the whole batch: the sub-batches' steps one after another. */
        public double layerStepUs(double subBatchStepUs) {
            requireStepTime(subBatchStepUs);
            return subBatches * subBatchStepUs;
        }
    }

    /**
     * What a fit serves when one layer's decode attention step over all its sequences takes {@code layerStepUs}:
     * a decode step through all layers is taken to cost {@code layers ×} that (attention only: no projections,
     * MLP or sampling).
     */
    public static Throughput throughput(Fit fit, double layerStepUs) {
        return new Throughput(fit, layerStepUs);
    }

    public record Throughput(Fit fit, double layerStepUs) {
        public Throughput {
            Objects.requireNonNull(fit, "fit");
            requireStepTime(layerStepUs);
        }

        /** Decode steps per second through all layers: {@code 1 / (layers × layer step)}. */
        public double stepsPerSecond() {
            return 1e6 / (fit.layers() * layerStepUs);
        }

        /** Sequences × steps/s: tokens generated per second over the whole budget. */
        public double sequenceStepsPerSecond() {
            return fit.sequences() * stepsPerSecond();
        }

        /** This throughput over {@code other}'s (e.g. 1-bit over fp16). */
        public double over(Throughput other) {
            return sequenceStepsPerSecond() / other.sequenceStepsPerSecond();
        }
    }

    private static void requireStepTime(double us) {
        if (!Double.isFinite(us) || us <= 0) {
            throw new IllegalArgumentException("a step time must be positive and finite, got " + us + " µs");
        }
    }
}
