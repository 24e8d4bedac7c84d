package dev.calibquant.sharding;

/**
 * A shard failed while doing its part of an operation of a {@link ShardedKvCache}; the cause is what the shard
 * threw (a {@link dev.calibquant.cache.CacheMemoryLimitException}, a device error, ...). By the time it is thrown, the
 * parts other shards had done were undone (a fill, an append) or discarded (a decode's outputs): the set is as it
 * was, unless {@link #getSuppressed()} holds a failed undo, which the sequence then reports on every later use.
 */
public final class ShardFailureException extends RuntimeException {
    private final String shard;

    /** A failure of shard {@code shard} while {@code operation} ("decoding layer 3 of the batch"). */
    public ShardFailureException(String shard, String operation, Throwable cause) {
        super("shard '" + shard + "' failed " + operation + ": " + cause, cause);
        this.shard = shard;
    }

    /** The name of the shard that failed. */
    public String shard() {
        return shard;
    }
}
