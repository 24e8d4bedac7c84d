package dev.calibquant.gpu;

/**
 * Closes an owner's resources one after another: every one is tried, the first failure is kept and the later ones
 * are added to it as suppressed; {@link #rethrow} throws it at the end. A {@link dev.calibquant.cache.CacheLeakException}
 * leads when there is one (the leak report is what the caller must see).
 */
final class Closer {
    private RuntimeException failure;

    /** Closes {@code c} (nothing for {@code null}), keeping any failure. */
    void close(AutoCloseable c) {
        if (c == null) {
            return;
        }
        try {
            c.close();
        } catch (Exception e) {
            add(e instanceof RuntimeException r ? r : new IllegalStateException(e));
        }
    }

    /** Keeps {@code e} as the failure or as suppressed by it. */
    void add(RuntimeException e) {
        if (failure == null) {
            failure = e;
        } else if (e instanceof dev.calibquant.cache.CacheLeakException
                && !(failure instanceof dev.calibquant.cache.CacheLeakException)) {
            e.addSuppressed(failure);
            failure = e;
        } else {
            failure.addSuppressed(e);
        }
    }

    /** Throws the first failure, if any. */
    void rethrow() {
        if (failure != null) {
            throw failure;
        }
    }
}
