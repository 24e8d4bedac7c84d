package dev.calibquant.cache;

/**
 * The cache-wide byte count and its limit. A reservation is checked and recorded in one step under the lock, so two
 * threads cannot both squeeze under the limit; the caller allocates after reserving and releases on failure.
 */
final class MemoryAccountant {

    private final long limitBytes;
    private MemoryUsage live = MemoryUsage.ZERO;

    MemoryAccountant(long limitBytes) {
        if (limitBytes <= 0) {
            throw new IllegalArgumentException("cache byte limit must be positive, got " + limitBytes);
        }
        this.limitBytes = limitBytes;
    }

    long limitBytes() {
        return limitBytes;
    }

    /** @throws CacheMemoryLimitException when {@code delta} would take the live bytes past the limit; nothing recorded */
    synchronized void reserve(MemoryUsage delta, String what) {
        long after = live.totalBytes() + delta.totalBytes();
        if (after > limitBytes || after < 0) {
            throw new CacheMemoryLimitException(what, delta.totalBytes(), live.totalBytes(), limitBytes);
        }
        live = live.plus(delta);
    }

    /** Records {@code delta} and returns true when it fits under the limit; otherwise records nothing. */
    synchronized boolean tryReserve(MemoryUsage delta) {
        long after = live.totalBytes() + delta.totalBytes();
        if (after > limitBytes || after < 0) {
            return false;
        }
        live = live.plus(delta);
        return true;
    }

    synchronized void release(MemoryUsage delta) {
        live = live.minus(delta);
    }

    synchronized MemoryUsage live() {
        return live;
    }
}
