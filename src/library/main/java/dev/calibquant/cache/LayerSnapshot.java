package dev.calibquant.cache;

import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.MemorySegment;
import java.util.List;

/** A {@link LayerKvView} as it stood when taken: read-only segments of the layer's blocks. */
record LayerSnapshot(int kvHeads, int headDim, DType dtype, int fullTokens, int fullCapacity,
        MemorySegment fullKeys, MemorySegment fullValues, List<QuantizedSpan> visualSpans) implements LayerKvView {

    LayerSnapshot {
        visualSpans = List.copyOf(visualSpans);
    }
}
