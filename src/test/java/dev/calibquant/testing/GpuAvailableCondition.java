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
        CudaAvailability a = Cuda.availability();
        if (a.available()) {
            return ConditionEvaluationResult.enabled("GPU available: " + a.reason());
        }
        String reason = "SKIPPED GPU test (no usable GPU): " + a.reason();
        if (REPORTED.compareAndSet(false, true)) {
            System.out.println("[calibquant] " + reason);
        }
        return ConditionEvaluationResult.disabled(reason);
    }
}
