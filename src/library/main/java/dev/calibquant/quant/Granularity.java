package dev.calibquant.quant;

/**
 * Which elements share one (scale, offset) pair within a span of one KV head.
 *
 * <p>Shapes of the scale and offset arrays of a {@link QuantizedSpan}, per KV head:
 * {@code PER_CHANNEL} (the method) and {@code GLOBAL} (ablation: one min/max over the whole span, stored broadcast to
 * every channel so consumers need no special case) are {@code [headDim]}; {@code PER_TOKEN} (KIVI-style, for values)
 * is {@code [tokens]}.
 */
public enum Granularity { PER_CHANNEL, GLOBAL, PER_TOKEN }
