package dev.calibquant.cuda;

/**
 * Arms one injected driver failure for the fault tests of other packages ({@link InjectedFaults} is package-private
 * in the library): {@code try (FaultInjection f = FaultInjection.failNth("cuMemcpyHtoDAsync", 1, INVALID_VALUE))}.
 * Closing it disarms; {@link #fired()} says whether the failure happened.
 */
public final class FaultInjection implements AutoCloseable {
    /** CUresult codes the tests inject. */
    public static final int INVALID_VALUE = 1;
    public static final int OUT_OF_MEMORY = 2;
    public static final int LAUNCH_FAILED = 719;

    private int fired = -1;

    private FaultInjection() {}

    /** The {@code nth} driver call whose name starts with {@code callPrefix} fails with {@code result}. */
    public static FaultInjection failNth(String callPrefix, int nth, int result) {
        InjectedFaults.arm(callPrefix, nth, result);
        return new FaultInjection();
    }

    /** Failures injected (0 or 1); disarms first. */
    public int fired() {
        close();
        return fired;
    }

    @Override
    public void close() {
        if (fired < 0) {
            fired = InjectedFaults.disarm();
        }
    }
}
