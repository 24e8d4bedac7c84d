package dev.calibquant.cache;

/**
 * An allocation would take a cache past its byte limit. Thrown before anything is allocated: the cache and the
 * sequence are as they were. Distinct from the storage running out of memory ({@link OutOfMemoryError}).
 */
public final class CacheMemoryLimitException extends RuntimeException {

    private final long requestedBytes;
    private final long liveBytes;
    private final long limitBytes;

    public CacheMemoryLimitException(String what, long requestedBytes, long liveBytes, long limitBytes) {
        super(what + " needs " + requestedBytes + " bytes; the cache holds " + liveBytes + " of its " + limitBytes
                + "-byte limit");
        this.requestedBytes = requestedBytes;
        this.liveBytes = liveBytes;
        this.limitBytes = limitBytes;
    }

    public long requestedBytes() {
        return requestedBytes;
    }

    public long liveBytes() {
        return liveBytes;
    }

    public long limitBytes() {
        return limitBytes;
    }
}
