package dev.calibquant.testing;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.cuda.Cuda;
import dev.calibquant.cuda.CudaAvailability;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.DeviceProperties;
import dev.calibquant.kernels.KernelCatalog;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.function.IntSupplier;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.extension.AfterEachCallback;
import org.junit.jupiter.api.extension.BeforeEachCallback;
import org.junit.jupiter.api.extension.ExtensionContext;

/**
 * What each GPU test class used to repeat, for every test: before it, a CUDA context on device 0; during it, on first
 * asking, a fresh seed (printed by {@link Seeds#fresh}, with a {@link Random} from it) and the device's kernel
 * catalog; after it, the catalog closed, the context checked for resources left open — a leak fails the test, naming
 * the seed — and the context closed. A {@link GpuTest} class holds one in an instance field, so that each test has
 * its own: {@code @RegisterExtension final GpuFixture gpu = new GpuFixture();}, and its tests use
 * {@code gpu.context()}, {@code gpu.random()}, {@code gpu.seed()}, {@code gpu.catalog()}.
 *
 * <p>Where no GPU can be used, {@link GpuTest} skips the class with the driver probe's reason before any of this
 * runs. A test that reaches this fixture without a usable GPU all the same (its class not marked) is skipped with that
 * same reason, never passed nor failed.
 */
public final class GpuFixture implements BeforeEachCallback, AfterEachCallback {
    private CudaContext context;
    private KernelCatalog catalog;
    private String testClass;
    private long seed;
    private Random random; // null until the test asks for the seed

    @Override
    public void beforeEach(ExtensionContext test) {
        CudaAvailability a = Cuda.availability();
        Assumptions.assumeTrue(a.available(), () -> GpuAvailableCondition.skipReason(a));
        context = Cuda.device(0).openContext();
        testClass = test.getRequiredTestClass().getSimpleName();
    }

    /** This test's context on device 0. */
    public CudaContext context() {
        if (context == null) {
            throw new IllegalStateException("GpuFixture holds a context only while a test runs");
        }
        return context;
    }

    /** This test's seed, drawn and printed on the first call: {@code -Dcalibquant.seed=N} replays it. */
    public synchronized long seed() {
        context();
        if (random == null) {
            seed = Seeds.fresh(testClass);
            random = new Random(seed);
        }
        return seed;
    }

    /** The {@link Random} from {@link #seed()}, one for the whole test. */
    public synchronized Random random() {
        seed();
        return random;
    }

    /**
     * The catalog for this device's best target, {@link KernelCatalog#open(CudaContext)}, opened on the first call in
     * a test; closed after the test, before the leak check. A test that needs another target opens its own.
     */
    public KernelCatalog catalog() {
        if (catalog == null) {
            catalog = KernelCatalog.open(context());
        }
        return catalog;
    }

    /** Skips the test (an assumption, not a failure) unless the device's compute capability is {@code major.minor}. */
    public void assumeComputeCapability(int major, int minor, String why) {
        DeviceProperties p = context().device().properties();
        Assumptions.assumeTrue(p.computeMajor() == major && p.computeMinor() == minor,
                () -> why + "; this is " + p.computeMajor() + "." + p.computeMinor());
    }

    @Override
    public void afterEach(ExtensionContext test) throws Exception {
        CudaContext ctx = context;
        KernelCatalog kernels = catalog;
        String description = "GPU resources left open by the test" + (random != null ? " (seed " + seed + ")" : "");
        context = null;
        catalog = null;
        random = null;
        if (ctx != null) { // null where the test was skipped before the context was opened
            closeChecked(kernels, ctx::liveResources, ctx, description);
        }
    }

    /**
     * Closes {@code catalog} (when not null), asserts that {@code liveResources} is then zero, and closes
     * {@code context} whatever came before: after a leak too, so that the context frees what was left open (its
     * {@link dev.calibquant.cuda.ResourceLeakException} naming each of them goes with the failure) and nothing stays
     * allocated into the next test. The first failure is thrown, with the later ones suppressed in it.
     */
    static void closeChecked(AutoCloseable catalog, IntSupplier liveResources, AutoCloseable context,
            String description) throws Exception {
        List<Throwable> failures = new ArrayList<>();
        if (catalog != null) {
            try {
                catalog.close();
            } catch (Exception e) {
                failures.add(e);
            }
        }
        try {
            assertThat(liveResources.getAsInt()).as(description).isZero();
        } catch (AssertionError | RuntimeException e) {
            failures.add(e);
        }
        try {
            context.close();
        } catch (Exception e) {
            failures.add(e);
        }
        if (failures.isEmpty()) {
            return;
        }
        Throwable first = failures.getFirst();
        failures.stream().skip(1).forEach(first::addSuppressed);
        if (first instanceof Exception e) {
            throw e;
        }
        throw (Error) first;
    }
}
