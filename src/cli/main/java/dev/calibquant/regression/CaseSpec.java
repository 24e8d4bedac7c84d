package dev.calibquant.regression;

/**
 * One regression case of a kernel variant: its position, the seed its inputs are drawn from (see
 * {@link CaseSeeds}) and a description of its shape that the recorded file must match.
 */
public record CaseSpec(int index, long seed, String shape) {}
