package dev.calibquant.quant;

/**
 * The point a clipping factor {@code c} shrinks a channel's range toward (spec §2). At {@code c = 1} both keep the
 * full range {@code [min, max]}.
 */
public enum ClipAnchor {
    /**
     * The paper's method: {@code [c·min, c·max]}. With 1 bit every element is rebuilt at an end of that range, and
     * the shrink moves both ends toward zero, off-centre for a channel whose values are not centred on zero.
     */
    ZERO,
    /**
     * About the channel's midpoint {@code m = (min + max)/2}: {@code [m − c·(max − min)/2, m + c·(max − min)/2]}. The
     * range keeps its centre: on this project's model, 1-bit values clipped this way (0.7) lose far less accuracy
     * than the paper's clip toward zero (docs/calibquant-spec.md §2, "Clip anchor").
     */
    MIDPOINT
}
