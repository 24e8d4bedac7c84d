package dev.calibquant.cache;

import java.util.Random;
import org.junit.jupiter.api.extension.ExtensionContext;
import org.junit.jupiter.api.extension.TestExecutionExceptionHandler;

/**
 * A fresh seed per test (or {@code -Dcalibquant.seed=N} to replay one), named in the failure of any test that used
 * it: register with {@code @RegisterExtension final RandomSeedExtension seed = new RandomSeedExtension();}.
 */
public final class RandomSeedExtension implements TestExecutionExceptionHandler {

    private final long seed = Long.getLong("calibquant.seed", new Random().nextLong());

    public long seed() {
        return seed;
    }

    public Random random() {
        return new Random(seed);
    }

    @Override
    public void handleTestExecutionException(ExtensionContext context, Throwable failure) throws Throwable {
        AssertionError withSeed = new AssertionError("failed with seed " + seed + " (replay: -Dcalibquant.seed="
                + seed + "): " + failure.getMessage(), failure);
        throw withSeed;
    }
}
