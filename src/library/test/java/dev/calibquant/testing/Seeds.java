package dev.calibquant.testing;

import java.util.Random;

/** Fresh random seeds for tests, printed so a failure can be replayed with -Dcalibquant.seed=N. */
public final class Seeds {
    private Seeds() {}

    public static long fresh(String test) {
        String fixed = System.getProperty("calibquant.seed");
        long seed = fixed != null ? Long.parseLong(fixed) : new Random().nextLong();
        System.out.println("[calibquant] " + test + " seed=" + seed);
        return seed;
    }
}
