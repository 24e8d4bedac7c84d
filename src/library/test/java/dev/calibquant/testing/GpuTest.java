package dev.calibquant.testing;

import java.lang.annotation.ElementType;
import java.lang.annotation.Retention;
import java.lang.annotation.RetentionPolicy;
import java.lang.annotation.Target;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * Marks a test class or method that needs a usable NVIDIA GPU. Where there is none it is skipped — never passed —
 * and the reason is printed once to the build log and recorded in the test report. A class whose tests each need a
 * CUDA context (checked for leaks after the test) holds a {@link GpuFixture}.
 */
@Target({ElementType.TYPE, ElementType.METHOD})
@Retention(RetentionPolicy.RUNTIME)
@Tag("gpu")
@ExtendWith(GpuAvailableCondition.class)
public @interface GpuTest {}
