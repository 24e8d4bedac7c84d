package dev.calibquant.sharding;

import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.NonFiniteInputException;
import java.util.List;

/** Runs the shards' parts of one operation, and turns their failures into one exception after undoing the rest. */
final class ShardRuns {

    private ShardRuns() {
    }

    /** Undoes the part of one shard that succeeded. */
    interface Undo {
        void undo(int part);
    }

    /**
     * Runs each shard's part; when any failed, undoes the others' (if {@code undo}) and throws the first failure as
     * a {@link ShardFailureException} naming its shard, later failures suppressed. A failed undo is suppressed too
     * and leaves the sequences of the operation refusing further use (their state is no longer known).
     */
    static void runAll(ShardThreads threads, List<CacheShard> shards, List<ShardedSequence> sequences, String operation,
            int[] on, Runnable[] work, boolean parallel, Undo undo) {
        Throwable[] failed = threads.run(on, work, parallel);
        int first = -1;
        for (int i = 0; i < failed.length; i++) {
            if (failed[i] != null) {
                first = i;
                break;
            }
        }
        if (first < 0) {
            return;
        }
        Throwable primary = failed[first];
        // a refusal of the caller's input (a shard checked it, and wrote nothing) keeps its type
        boolean refusal = primary instanceof InvalidShapeException || primary instanceof NonFiniteInputException;
        RuntimeException thrown = refusal ? (RuntimeException) primary
                : wrap(shards.get(on[first]).name(), operation, primary);
        for (int i = first + 1; i < failed.length; i++) {
            if (failed[i] != null) {
                thrown.addSuppressed(wrap(shards.get(on[i]).name(), operation, failed[i]));
            }
        }
        if (undo != null) {
            for (int i = 0; i < failed.length; i++) {
                if (failed[i] == null) {
                    try {
                        undo.undo(i);
                    } catch (RuntimeException | Error e) {
                        thrown.addSuppressed(new ShardFailureException(shards.get(on[i]).name(), "undoing its part of "
                                + operation, e));
                        for (ShardedSequence s : sequences) {
                            s.broken("undoing shard '" + shards.get(on[i]).name() + "''s part of " + operation
                                    + " failed: " + e);
                        }
                    }
                }
            }
        }
        if (primary instanceof Error error && !(primary instanceof OutOfMemoryError)) {
            error.addSuppressed(thrown);
            throw error;
        }
        throw thrown;
    }

    private static RuntimeException wrap(String shard, String operation, Throwable failure) {
        return new ShardFailureException(shard, operation, failure);
    }
}
