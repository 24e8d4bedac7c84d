package dev.calibquant.cache;

/**
 * The attention shape of a model's language part: what every sequence of a cache has per layer.
 *
 * @param layers decoder layers, each with its own cache
 * @param queryHeads attention heads of the query
 * @param kvHeads key/value heads; each serves {@code queryHeads / kvHeads} query heads (grouped-query attention)
 * @param headDim elements per head vector
 */
public record ModelGeometry(int layers, int queryHeads, int kvHeads, int headDim) {

    public ModelGeometry {
        if (layers <= 0 || queryHeads <= 0 || kvHeads <= 0 || headDim <= 0) {
            throw new IllegalArgumentException("model geometry needs positive sizes, got " + describe(layers,
                    queryHeads, kvHeads, headDim));
        }
        if (queryHeads % kvHeads != 0) {
            throw new IllegalArgumentException("model geometry " + describe(layers, queryHeads, kvHeads, headDim)
                    + ": query heads must be a multiple of KV heads");
        }
    }

    /** Query heads per KV head. */
    public int groupSize() {
        return queryHeads / kvHeads;
    }

    private static String describe(int layers, int queryHeads, int kvHeads, int headDim) {
        return "(layers " + layers + ", query heads " + queryHeads + ", KV heads " + kvHeads + ", head dim "
                + headDim + ")";
    }

    @Override
    public String toString() {
        return describe(layers, queryHeads, kvHeads, headDim);
    }
}
