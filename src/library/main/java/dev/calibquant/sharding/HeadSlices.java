package dev.calibquant.sharding;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * Head ranges of layers and of batch tensors. Everything the cache stores is laid out head-major (full-precision
 * {@code [kvHeads][capacity][headDim]}, codes {@code [kvHeads][tokens][bytes]}, scales {@code [kvHeads][...]}), so a
 * range of heads is one contiguous slice of every segment: splitting a layer across shards copies nothing.
 */
final class HeadSlices {
    private HeadSlices() {
    }

    /** A {@link LayerKvView} in host memory. */
    record HostLayer(int kvHeads, int headDim, DType dtype, int fullTokens, int fullCapacity, MemorySegment fullKeys,
            MemorySegment fullValues, List<QuantizedSpan> visualSpans) implements LayerKvView {
        HostLayer {
            visualSpans = List.copyOf(visualSpans);
        }
    }

    /** Heads {@code [first, first + heads)} of {@code view}: slices, no copy. */
    static LayerKvView slice(LayerKvView view, int first, int heads) {
        int all = view.kvHeads();
        List<QuantizedSpan> spans = new ArrayList<>();
        for (QuantizedSpan q : view.visualSpans()) {
            spans.add(q.withSegments(heads, q.segments().stream().map(m -> part(m, all, first, heads)).toList()));
        }
        return new HostLayer(heads, view.headDim(), view.dtype(), view.fullTokens(), view.fullCapacity(),
                part(view.fullKeys(), all, first, heads), part(view.fullValues(), all, first, heads), spans);
    }

    private static MemorySegment part(MemorySegment segment, int all, int first, int heads) {
        if (segment.byteSize() % all != 0) {
            throw new InvalidShapeException("a segment of " + segment.byteSize() + " bytes does not split into " + all
                    + " equal heads");
        }
        long perHead = segment.byteSize() / all;
        return segment.asSlice(first * perHead, heads * perHead);
    }

    /** {@code parts} (consecutive head ranges of one layer) as one layer, copied into {@code arena}. */
    static LayerKvView merge(List<LayerKvView> parts, Arena arena) {
        LayerKvView first = parts.getFirst();
        int heads = 0;
        int capacity = 0;
        for (LayerKvView p : parts) {
            heads += p.kvHeads();
            capacity = Math.max(capacity, p.fullCapacity());
        }
        long rowBytes = (long) first.headDim() * first.dtype().byteSize();
        long half = heads * capacity * rowBytes;
        MemorySegment keys = arena.allocate(half, 64);
        MemorySegment values = arena.allocate(half, 64);
        long at = 0;
        for (LayerKvView p : parts) { // parts may have grown to different capacities: re-pitched to the largest
            long from = p.fullCapacity() * rowBytes;
            for (int h = 0; h < p.kvHeads(); h++) {
                MemorySegment.copy(p.fullKeys(), h * from, keys, at, from);
                MemorySegment.copy(p.fullValues(), h * from, values, at, from);
                at += capacity * rowBytes;
            }
        }
        List<QuantizedSpan> spans = new ArrayList<>();
        for (int i = 0; i < first.visualSpans().size(); i++) {
            int s = i;
            QuantizedSpan q = first.visualSpans().get(i);
            List<MemorySegment> merged = new ArrayList<>();
            for (int m = 0; m < q.segments().size(); m++) {
                int segment = m;
                merged.add(concat(parts, s, x -> x.segments().get(segment), arena));
            }
            spans.add(q.withSegments(heads, merged));
        }
        return new HostLayer(heads, first.headDim(), first.dtype(), first.fullTokens(), capacity, keys, values, spans);
    }

    private static MemorySegment concat(List<LayerKvView> parts, int span,
            java.util.function.Function<QuantizedSpan, MemorySegment> segment, Arena arena) {
        long bytes = 0;
        for (LayerKvView p : parts) {
            bytes += segment.apply(p.visualSpans().get(span)).byteSize();
        }
        MemorySegment out = arena.allocate(bytes, 64);
        long at = 0;
        for (LayerKvView p : parts) {
            MemorySegment s = segment.apply(p.visualSpans().get(span));
            MemorySegment.copy(s, 0, out, at, s.byteSize());
            at += s.byteSize();
        }
        return out;
    }

    /** A copy of {@code view} in {@code arena}. */
    static LayerKvView copy(LayerKvView view, Arena arena) {
        return merge(List.of(view), arena);
    }

    /**
     * Copies, for each {@code j}, heads {@code [first, first + heads)} of item {@code items[j]} of {@code from}
     * ({@code [B][allHeads][rowBytes]}) to item {@code j} of {@code to} ({@code [items][heads][rowBytes]}).
     */
    static void gather(MemorySegment from, int allHeads, int[] items, int first, int heads, long rowBytes,
            MemorySegment to) {
        for (int j = 0; j < items.length; j++) {
            MemorySegment.copy(from, (items[j] * (long) allHeads + first) * rowBytes, to, j * heads * rowBytes,
                    heads * rowBytes);
        }
    }

    /** The inverse of {@link #gather}: item {@code j} of {@code from} back to its place in {@code to}. */
    static void scatter(MemorySegment from, int allHeads, int[] items, int first, int heads, long rowBytes,
            MemorySegment to) {
        for (int j = 0; j < items.length; j++) {
            MemorySegment.copy(from, j * heads * rowBytes, to, (items[j] * (long) allHeads + first) * rowBytes,
                    heads * rowBytes);
        }
    }
}
