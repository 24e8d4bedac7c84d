package dev.calibquant.model;

/**
 * A generated answer.
 *
 * @param tokens the generated tokens, ending with {@code <eos>} unless the length limit came first
 * @param kvBytes bytes of the sequence's KV cache after the last step, all layers: full-precision tokens in the
 *     cache's dtype, plus the visual spans' codes and fp32 scales where quantized (allocation slack not counted)
 * @param decodeSteps decode steps run (the first token comes from prefill)
 * @param decodeNanos time spent in those steps
 */
public record Answer(int[] tokens, long kvBytes, int decodeSteps, long decodeNanos) {

    public String text() {
        return Vocabulary.text(tokens);
    }
}
