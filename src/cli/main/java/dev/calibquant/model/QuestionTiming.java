package dev.calibquant.model;

/** When the question reaches the model: with the image, or after the image's KV cache was quantized. */
public enum QuestionTiming {
    /**
     * Image and question are prefilled together, as in the paper: the first answer token comes from prefill with
     * exact attention, and only the later ones read the quantized cache (a one-token answer never does).
     */
    WITH_IMAGE,
    /**
     * The image alone is prefilled and its cache quantized, as for an image kept in the cache for later questions;
     * the question is then fed through decode steps, so every answer token reads the quantized cache.
     */
    AFTER_IMAGE
}
