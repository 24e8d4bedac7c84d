package dev.calibquant.regression;

import java.util.List;

/**
 * What one regression case produced on the GPU.
 *
 * @param checkPassed whether the run agreed with the CPU reference (the selftest's check)
 * @param checkFailure why not, or {@code null}
 * @param inputsSha256 hash of every input drawn from the case's seed: equal on every machine unless the scenario
 *     code changed
 * @param cacheSha256 hash of the GPU cache contents attention ran on ({@code null} where there is no attention)
 * @param calibrationMode the decode step's calibration mode, or −1
 */
public record Observation(boolean checkPassed, String checkFailure, String inputsSha256, String cacheSha256,
        int workItems, int calibrationMode, List<ObservedOutput> outputs) {

    public Observation {
        outputs = List.copyOf(outputs);
    }

    /** A run that could not produce outputs (it threw, or a check before the outputs failed). */
    public static Observation failed(String why) {
        return new Observation(false, why, null, null, 0, -1, List.of());
    }
}
