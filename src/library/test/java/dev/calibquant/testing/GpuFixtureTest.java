package dev.calibquant.testing;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import dev.calibquant.cuda.Cuda;
import dev.calibquant.cuda.CudaAvailability;
import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.cuda.ResourceLeakException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.condition.EnabledIf;
import org.junit.jupiter.api.extension.ConditionEvaluationResult;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.platform.engine.TestExecutionResult;
import org.junit.platform.engine.discovery.DiscoverySelectors;
import org.junit.platform.launcher.EngineFilter;
import org.junit.platform.launcher.TestExecutionListener;
import org.junit.platform.launcher.TestIdentifier;
import org.junit.platform.launcher.core.LauncherDiscoveryRequestBuilder;
import org.junit.platform.launcher.core.LauncherFactory;

/**
 * {@link GpuFixture} and {@link GpuAvailableCondition}: the closing and leak logic with stand-ins, the condition on
 * probe results, and, through the JUnit launcher on sample classes, that without a GPU a GPU test is skipped with the
 * probe's reason and opens nothing, and that on a GPU a leak fails the test and every context is closed.
 */
class GpuFixtureTest {
    private static final CudaAvailability NO_GPU = new CudaAvailability(false,
            "no NVIDIA driver: libcuda.so.1 cannot be loaded (test)", 0, 0);

    /** Set only while {@link #launch} runs the samples: they never run on their own. */
    private static volatile boolean launching;
    /** The contexts the samples were given, to check afterwards that each was closed. */
    private static final List<CudaContext> SEEN = new CopyOnWriteArrayList<>();

    static boolean launching() {
        return launching;
    }

    /** A GPU test class as the GPU tests use the fixture: one test leaves a buffer open, the other does not. */
    @GpuTest
    @EnabledIf(value = "dev.calibquant.testing.GpuFixtureTest#launching", disabledReason = "run by GpuFixtureTest only")
    static class Sample {
        @RegisterExtension
        final GpuFixture gpu = new GpuFixture();

        @Test
        void leavesABufferOpen() {
            SEEN.add(gpu.context());
            gpu.random();
            gpu.context().allocate(64);
        }

        @Test
        void closesWhatItOpens() {
            SEEN.add(gpu.context());
            gpu.catalog(); // closed by the fixture
            try (DeviceBuffer b = gpu.context().allocate(64)) {
                b.fill((byte) 1);
            }
        }
    }

    /** The fixture on a class that lacks {@link GpuTest}. */
    @EnabledIf(value = "dev.calibquant.testing.GpuFixtureTest#launching", disabledReason = "run by GpuFixtureTest only")
    static class Unmarked {
        @RegisterExtension
        final GpuFixture gpu = new GpuFixture();

        @Test
        void opensAContext() {
            SEEN.add(gpu.context());
        }
    }

    @Test
    void theCatalogIsClosedThenTheLeakCheckedThenTheContextClosed() throws Exception {
        List<String> events = new ArrayList<>();
        GpuFixture.closeChecked(() -> events.add("catalog"), () -> {
            events.add("check");
            return 0;
        }, () -> events.add("context"), "left open");
        assertThat(events).containsExactly("catalog", "check", "context");

        events.clear();
        GpuFixture.closeChecked(null, () -> 0, () -> events.add("context"), "left open");
        assertThat(events).containsExactly("context");
    }

    @Test
    void aLeakFailsTheTestAndTheContextIsClosedAllTheSame() {
        List<String> events = new ArrayList<>();
        ResourceLeakException report = new ResourceLeakException("CUDA context of device 0",
                List.of("device buffer of 64 bytes"));
        assertThatThrownBy(() -> GpuFixture.closeChecked(() -> events.add("catalog"), () -> 2, () -> {
            events.add("context");
            throw report;
        }, "GPU resources left open by the test (seed 7)"))
                .isInstanceOf(AssertionError.class)
                .hasMessageContaining("[GPU resources left open by the test (seed 7)]")
                .hasMessageContaining("expected: 0").hasMessageContaining("but was: 2")
                .satisfies(e -> assertThat(e.getSuppressed()).containsExactly(report));
        assertThat(events).containsExactly("catalog", "context");
    }

    @Test
    void aCatalogThatFailsToCloseIsReportedFirstAndTheContextIsStillClosed() {
        List<String> events = new ArrayList<>();
        IllegalStateException unload = new IllegalStateException("cuModuleUnload failed");
        assertThatThrownBy(() -> GpuFixture.closeChecked(() -> {
            throw unload;
        }, () -> 1, () -> events.add("context"), "left open"))
                .isSameAs(unload)
                .satisfies(e -> assertThat(e.getSuppressed()).singleElement()
                        .isInstanceOf(AssertionError.class));
        assertThat(events).containsExactly("context");
    }

    @Test
    void aContextThatFailsToCloseFailsTheTest() {
        IllegalStateException release = new IllegalStateException("cuDevicePrimaryCtxRelease_v2 failed");
        assertThatThrownBy(() -> GpuFixture.closeChecked(null, () -> 0, () -> {
            throw release;
        }, "left open")).isSameAs(release);
    }

    @Test
    void theConditionSkipsWithTheProbesReasonWhereThereIsNoGpu() {
        ConditionEvaluationResult off = GpuAvailableCondition.evaluate(NO_GPU);
        assertThat(off.isDisabled()).isTrue();
        assertThat(off.getReason()).contains(
                "SKIPPED GPU test (no usable GPU): no NVIDIA driver: libcuda.so.1 cannot be loaded (test)");

        ConditionEvaluationResult on = GpuAvailableCondition.evaluate(new CudaAvailability(true, "1 device", 13000, 1));
        assertThat(on.isDisabled()).isFalse();
    }

    @Test
    void withoutAGpuTheSamplesAreSkippedWithTheReasonAndOpenNothing() {
        CudaAvailability a = Cuda.availability();
        assumeFalse(a.available(), "a GPU is usable here: the skip is not what runs");
        String reason = GpuAvailableCondition.skipReason(a);

        Recorder sample = launch(Sample.class);
        assertThat(sample.skipped).containsExactly(reason); // the class, before any of its tests or the fixture
        assertThat(sample.started).isEmpty();
        assertThat(sample.finished).isEmpty();

        Recorder unmarked = launch(Unmarked.class);
        assertThat(unmarked.skipped).isEmpty();
        assertThat(unmarked.finished).containsOnlyKeys("opensAContext()");
        TestExecutionResult aborted = unmarked.finished.get("opensAContext()");
        assertThat(aborted.getStatus()).isEqualTo(TestExecutionResult.Status.ABORTED); // skipped, not failed
        assertThat(aborted.getThrowable()).get().extracting(Throwable::getMessage).asString().endsWith(reason);
        assertThat(SEEN).isEmpty();
    }

    @Test
    @GpuTest
    void onAGpuALeakFailsTheTestAndEveryContextIsClosed() {
        SEEN.clear();
        Recorder sample = launch(Sample.class);
        assertThat(sample.skipped).isEmpty();
        TestExecutionResult leaked = sample.finished.get("leavesABufferOpen()");
        assertThat(leaked.getStatus()).isEqualTo(TestExecutionResult.Status.FAILED);
        Throwable failure = leaked.getThrowable().orElseThrow();
        assertThat(failure).isInstanceOf(AssertionError.class)
                .hasMessageContaining("GPU resources left open by the test (seed ").hasMessageContaining("but was: 1");
        assertThat(failure.getSuppressed()).singleElement().isInstanceOf(ResourceLeakException.class)
                .extracting(Throwable::getMessage).asString().contains("device buffer of 64 bytes");
        assertThat(sample.finished.get("closesWhatItOpens()").getStatus())
                .isEqualTo(TestExecutionResult.Status.SUCCESSFUL);

        assertThat(SEEN).hasSize(2);
        for (CudaContext ctx : SEEN) {
            assertThat(ctx.liveResources()).isZero();
            assertThatThrownBy(() -> ctx.allocate(8)).isInstanceOf(IllegalStateException.class)
                    .hasMessageContaining("closed");
        }
        SEEN.clear();
    }

    private static Recorder launch(Class<?> testClass) {
        Recorder recorder = new Recorder();
        launching = true;
        try {
            LauncherFactory.create().execute(LauncherDiscoveryRequestBuilder.request()
                    .selectors(DiscoverySelectors.selectClass(testClass))
                    .filters(EngineFilter.includeEngines("junit-jupiter"))
                    .build(), recorder);
        } finally {
            launching = false;
        }
        return recorder;
    }

    /** What the launcher reported: skip reasons (of tests and classes), and the tests started and finished. */
    private static final class Recorder implements TestExecutionListener {
        final List<String> skipped = new CopyOnWriteArrayList<>();
        final List<String> started = new CopyOnWriteArrayList<>();
        final Map<String, TestExecutionResult> finished = new ConcurrentHashMap<>();

        @Override
        public void executionSkipped(TestIdentifier test, String reason) {
            skipped.add(reason);
        }

        @Override
        public void executionStarted(TestIdentifier test) {
            if (test.isTest()) {
                started.add(test.getDisplayName());
            }
        }

        @Override
        public void executionFinished(TestIdentifier test, TestExecutionResult result) {
            if (test.isTest()) {
                finished.put(test.getDisplayName(), result);
            }
        }
    }
}
