package dev.calibquant.attention;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.MemorySegment;
import java.util.List;

/** A {@link LayerKvView} over segments owned by a test's arena (the real cache manager lives elsewhere). */
public record TestKvView(
        int kvHeads,
        int headDim,
        DType dtype,
        int fullTokens,
        int fullCapacity,
        MemorySegment fullKeys,
        MemorySegment fullValues,
        List<QuantizedSpan> visualSpans) implements LayerKvView {

    public TestKvView {
        visualSpans = List.copyOf(visualSpans);
    }
}
