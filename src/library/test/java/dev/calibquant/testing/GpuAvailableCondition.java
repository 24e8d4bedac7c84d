package dev.calibquant.testing;

import dev.calibquant.cuda.Cuda;
import dev.calibquant.cuda.CudaAvailability;
import java.util.concurrent.atomic.AtomicBoolean;
import org.junit.jupiter.api.extension.ConditionEvaluationResult;
import org.junit.jupiter.api.extension.ExecutionCondition;
import org.junit.jupiter.api.extension.ExtensionContext;

/** Skips {@link GpuTest}s with the driver probe's reason where no GPU can be used. */
public final class GpuAvailableCondition implements ExecutionCondition {
    private static final AtomicBoolean REPORTED = new AtomicBoolean();

    @Override
    public ConditionEvaluationResult evaluateExecutionCondition(ExtensionContext context) {
        ConditionEvaluationResult result = evaluate(Cuda.availability());
        if (result.isDisabled() && REPORTED.compareAndSet(false, true)) {
            System.out.println("[calibquant] " + result.getReason().orElseThrow());
        }
        return result;
    }

    /** Enabled where {@code a} says a GPU can be used; disabled otherwise, with {@link #skipReason}. */
    static ConditionEvaluationResult evaluate(CudaAvailability a) {
        return a.available() ? ConditionEvaluationResult.enabled("GPU available: " + a.reason())
                : ConditionEvaluationResult.disabled(skipReason(a));
    }

    /** What a skipped GPU test reports: {@code SKIPPED GPU test (no usable GPU): } and the probe's reason. */
    static String skipReason(CudaAvailability a) {
        return "SKIPPED GPU test (no usable GPU): " + a.reason();
    }
}
