package dev.calibquant.gpu;

/**
 * What a GPU decode step launched, for a user checking or debugging an integration: how the batch was cut and how
 * calibration ran. {@link DecodeErrorBound} turns it into the step's error bound against the CPU reference.
 *
 * @param sequences the batch size
 * @param workItems chunks of full-precision blocks and visual spans, each one program per KV head
 * @param calibrationMode 0: none; 1: a min/max pass first; 2: min/max inside each whole-span item; 3: one launch,
 *     the items of a span meet at a rendezvous
 * @param tokenBlock tokens per tile of the decode kernels (the error bound depends on it)
 */
public record DecodeStepInfo(int sequences, int workItems, int calibrationMode, int tokenBlock) {}
