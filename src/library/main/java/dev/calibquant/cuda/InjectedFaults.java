package dev.calibquant.cuda;

import java.util.concurrent.atomic.AtomicInteger;

/**
 * Driver failures on demand, for the fault tests: when armed, the {@code nth} call whose name starts with a given
 * prefix fails before it reaches the driver, with the exception the driver's {@code result} code would have given.
 * Only allocations, copies, memsets, launches and stream waits pass through here: the calls whose failure a cache
 * must survive. Package-private and unarmed unless a test in this package arms it (the test sources'
 * {@code FaultInjection}); unarmed, a call costs one volatile read.
 */
final class InjectedFaults {
    private record Plan(String callPrefix, AtomicInteger countdown, int result, AtomicInteger fired) {}

    private static volatile Plan plan;

    private InjectedFaults() {}

    /** Arms one failure: the {@code nth} (from 1) matching call fails with {@code result}; later ones pass. */
    static void arm(String callPrefix, int nth, int result) {
        if (nth < 1) {
            throw new IllegalArgumentException("nth must be at least 1, got " + nth);
        }
        plan = new Plan(callPrefix, new AtomicInteger(nth), result, new AtomicInteger());
    }

    /** Disarms; returns how many failures were injected since {@link #arm}. */
    static int disarm() {
        Plan p = plan;
        plan = null;
        return p == null ? 0 : p.fired().get();
    }

    /** Called just before the driver call {@code call}: throws the injected failure when its turn has come. */
    static void before(String call) {
        Plan p = plan;
        if (p != null && call.startsWith(p.callPrefix()) && p.countdown().decrementAndGet() == 0) {
            p.fired().incrementAndGet();
            throw Driver.error(p.result(), call + " [injected]");
        }
    }
}
