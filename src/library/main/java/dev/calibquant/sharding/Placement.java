package dev.calibquant.sharding;

/** Where a {@link ShardedKvCache} puts a sequence's cache. */
public enum Placement {
    /**
     * The whole sequence on one shard: the one with the most free bytes, counting what sequences created there and
     * not yet filled will take (data parallelism).
     */
    BY_SEQUENCE_MOST_FREE,
    /** The whole sequence on one shard, the shards taken in turn (data parallelism). */
    BY_SEQUENCE_ROUND_ROBIN,
    /**
     * Every sequence on every shard, each holding an equal, contiguous range of the KV heads, and the query heads
     * that attend to them (tensor parallelism). The KV heads must divide evenly by the number of shards.
     */
    BY_KV_HEAD;

    /** Whether a sequence lives on one shard (it can then be moved). */
    public boolean bySequence() {
        return this != BY_KV_HEAD;
    }
}
