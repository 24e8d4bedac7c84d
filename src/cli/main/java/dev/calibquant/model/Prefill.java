package dev.calibquant.model;

/**
 * What prefill leaves for decoding: per layer the prompt's keys (after RoPE) and values as
 * {@code [kvHeads][tokens][headDim]} fp32, and the logits of every prompt position ({@code [tokens][vocab]}).
 */
public record Prefill(int tokens, float[][] keys, float[][] values, float[] logits, int vocabSize) {

    /** The logits after the last prompt token: they choose the first answer token. */
    public float[] lastLogits() {
        float[] last = new float[vocabSize];
        System.arraycopy(logits, (tokens - 1) * vocabSize, last, 0, vocabSize);
        return last;
    }
}
