package dev.calibquant.cache;

import java.util.Objects;

/**
 * Where one decode step's key and value of one sequence go: row {@code row} of every KV head of a full-precision
 * pair laid out {@code [kvHeads][capacity][headDim]}. {@link KvStorage#appendRows} takes one per sequence of a batch.
 */
public record RowAppend(BlockPair full, int capacity, int row) {
    public RowAppend {
        Objects.requireNonNull(full, "full");
        if (row < 0 || row >= capacity) {
            throw new IndexOutOfBoundsException("row " + row + " of a block of " + capacity + " rows");
        }
    }
}
