package dev.calibquant.gpu;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.MemorySegment;
import java.util.List;

/** A layer of a {@link DeviceKvCache} copied to host memory, readable by the CPU reference. */
record DownloadedLayer(int kvHeads, int headDim, DType dtype, int fullTokens, int fullCapacity,
        MemorySegment fullKeys, MemorySegment fullValues, List<QuantizedSpan> visualSpans) implements LayerKvView {

    DownloadedLayer {
        visualSpans = List.copyOf(visualSpans);
    }
}
