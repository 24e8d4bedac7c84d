package dev.calibquant.sharding;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

/**
 * One thread per shard, owned by a {@link ShardedKvCache}: an operation's parts run on their shards' threads at once,
 * so no shard waits for another's host work (staging, launches, waiting for its stream), and the calls of several
 * caller threads queue per shard.
 */
final class ShardThreads implements AutoCloseable {
    private final List<ExecutorService> executors = new ArrayList<>();

    ShardThreads(List<String> names) {
        for (String name : names) {
            executors.add(Executors.newSingleThreadExecutor(task -> {
                Thread t = new Thread(task, "calibquant-shard-" + name);
                t.setDaemon(true); // an unclosed set does not keep the JVM alive
                return t;
            }));
        }
    }

    /**
     * Runs {@code work[i]} for shard {@code shards[i]} and waits for every part; returns what each threw (null where
     * it succeeded). With {@code parallel} and more than one part, each runs on its shard's thread; otherwise they run
     * one after the other on the calling thread (a part alone, or input only the caller may read). Waits through an
     * interrupt (the parts read the caller's memory until they end) and keeps the interrupt.
     */
    Throwable[] run(int[] shards, Runnable[] work, boolean parallel) {
        Throwable[] failed = new Throwable[work.length];
        if (!parallel || work.length == 1) {
            for (int i = 0; i < work.length; i++) {
                failed[i] = runHere(work[i]);
            }
            return failed;
        }
        List<Future<?>> futures = new ArrayList<>(work.length);
        for (int i = 0; i < work.length; i++) {
            try {
                futures.add(executors.get(shards[i]).submit(work[i]));
            } catch (RuntimeException e) { // rejected: the set is closing
                futures.add(null);
                failed[i] = e;
            }
        }
        boolean interrupted = false;
        for (int i = 0; i < futures.size(); i++) {
            Future<?> f = futures.get(i);
            while (f != null) {
                try {
                    f.get();
                    f = null;
                } catch (InterruptedException e) {
                    interrupted = true;
                } catch (ExecutionException e) {
                    failed[i] = e.getCause();
                    f = null;
                }
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
        return failed;
    }

    private static Throwable runHere(Runnable work) {
        try {
            work.run();
            return null;
        } catch (RuntimeException | Error e) {
            return e;
        }
    }

    /** Stops the threads once their queued work is done. */
    @Override
    public void close() {
        executors.forEach(ExecutorService::shutdown);
        boolean interrupted = false;
        for (ExecutorService e : executors) {
            while (true) {
                try {
                    if (e.awaitTermination(1, TimeUnit.MINUTES)) {
                        break;
                    }
                } catch (InterruptedException ie) {
                    interrupted = true;
                }
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }
}
