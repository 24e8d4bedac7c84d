package dev.calibquant.cache;

import java.util.Objects;

/**
 * The two blocks that hold the keys and the values of one thing (a layer's full-precision tokens, or one visual
 * span), laid out alike: byte {@code i} of {@link #keys} and byte {@code i} of {@link #values} are the same element of
 * the key and the value tensor. Each block is closed on its own by its owner.
 */
public record BlockPair(StorageBlock keys, StorageBlock values) {

    public BlockPair {
        Objects.requireNonNull(keys, "keys");
        Objects.requireNonNull(values, "values");
        if (keys == values) {
            throw new IllegalArgumentException("a block pair needs two distinct blocks, got " + keys.label() + " twice");
        }
    }

    /** Bytes of both blocks. */
    public long byteSize() {
        return keys.byteSize() + values.byteSize();
    }
}
