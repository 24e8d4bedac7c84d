package dev.calibquant.gpu;

import dev.calibquant.kernels.DecodePlan;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.QuantizedSpan;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Function;

/**
 * What the decode kernels need to know of one layer of a manager's sequence kept in a {@link DeviceStorage}: the
 * offsets of its index tables, found from where its segments lie in the storage's two planes. Pure (tested without a
 * GPU with made-up placements).
 *
 * <p>The kernels read (ptx/README.md) full-precision keys and values {@code [KVH][cap][D]} fp16 at element offset
 * {@code fp_off} of the key and value bases, a span's codes {@code [KVH][tokens][D·bits/8]} at byte offset
 * {@code code_off} of the key-code and value-code bases, and its σK, αK, σV, αV {@code [KVH][D]} fp32 at element
 * offset {@code scale_off} of four bases. The manager stores a layer's keys and values, and a span's key part and
 * value part ({@code [σ][α][codes]} each), as pairs at one offset of planes 0 and 1. So with every base a plane (and
 * αK, αV one scale array, {@link #scaleBytes}, further in): {@code fp_off = o/2}, {@code code_off = o + 2·scaleBytes},
 * {@code scale_off = o/4}. Every offset must be a multiple of 16 of its elements (32, 16 and 64 bytes).
 */
final class ManagedTables {

    private ManagedTables() {}

    /** Bytes of one per-channel scale array of a span: {@code kvHeads · headDim} fp32. */
    static long scaleBytes(int kvHeads, int headDim) {
        return 4L * kvHeads * headDim;
    }

    /**
     * The planner's entry for {@code view} (sequence {@code index} of the batch, for messages).
     *
     * @param locate where a segment lies in the storage (throws for one that is not in a live block)
     * @throws IllegalArgumentException when the layout is not the pairs described above (a view not made by a
     *     manager over a {@link DeviceStorage}) or an offset breaks the kernels' alignment
     */
    static DecodePlan.Entry entry(int index, LayerKvView view, Function<MemorySegment, DeviceStorage.Placement> locate) {
        String what = "sequence " + index + " of the batch";
        long fp = pairOffset(what + " full-precision keys and values", locate.apply(view.fullKeys()),
                locate.apply(view.fullValues()));
        long fpOff = elements(what + " full-precision block", fp, 2);
        long scaleBytes = scaleBytes(view.kvHeads(), view.headDim());
        List<TokenSpan> spans = new ArrayList<>();
        long[] codeOffsets = new long[view.visualSpans().size()];
        long[] scaleOffsets = new long[view.visualSpans().size()];
        for (int i = 0; i < view.visualSpans().size(); i++) {
            QuantizedSpan q = view.visualSpans().get(i);
            String span = what + " visual span " + i;
            // the kernels read all four arrays at this size, so a shorter one would be read past its end
            if (q.keyScale().byteSize() != scaleBytes || q.keyOffset().byteSize() != scaleBytes
                    || q.valueScale().byteSize() != scaleBytes || q.valueOffset().byteSize() != scaleBytes) {
                throw new IllegalArgumentException(span + ": the GPU kernels read per-channel scales of " + scaleBytes
                        + " bytes (σK, αK, σV, αV), this span has " + q.keyScale().byteSize() + ", "
                        + q.keyOffset().byteSize() + ", " + q.valueScale().byteSize() + " and "
                        + q.valueOffset().byteSize());
            }
            long o = pairOffset(span + " scales", locate.apply(q.keyScale()), locate.apply(q.valueScale()));
            requireAt(span + " key offsets (αK)", locate.apply(q.keyOffset()), 0, o + scaleBytes);
            requireAt(span + " value offsets (αV)", locate.apply(q.valueOffset()), 1, o + scaleBytes);
            requireAt(span + " key codes", locate.apply(q.keyCodes()), 0, o + 2 * scaleBytes);
            requireAt(span + " value codes", locate.apply(q.valueCodes()), 1, o + 2 * scaleBytes);
            scaleOffsets[i] = elements(span + " scales", o, 4);
            codeOffsets[i] = elements(span + " codes", o + 2 * scaleBytes, 1);
            spans.add(new TokenSpan(0, q.tokens()));
        }
        return new DecodePlan.Entry(fpOff, view.fullTokens(), view.fullCapacity(), spans, codeOffsets, scaleOffsets);
    }

    /** The offset shared by a key part in plane 0 and a value part in plane 1. */
    private static long pairOffset(String what, DeviceStorage.Placement keys, DeviceStorage.Placement values) {
        if (keys.plane() != 0 || values.plane() != 1 || keys.offset() != values.offset()) {
            throw new IllegalArgumentException(what + " are not a pair at one offset of planes 0 and 1 (keys " + keys
                    + ", values " + values + ")");
        }
        return keys.offset();
    }

    private static void requireAt(String what, DeviceStorage.Placement at, int plane, long offset) {
        if (at.plane() != plane || at.offset() != offset) {
            throw new IllegalArgumentException(what + " lie at " + at + "; the kernels read them at plane " + plane
                    + " offset " + offset);
        }
    }

    /** {@code bytes} as a count of {@code elementBytes}-byte elements, which must be a multiple of 16. */
    private static long elements(String what, long bytes, int elementBytes) {
        long align = 16L * elementBytes;
        if (bytes % align != 0) {
            throw new IllegalArgumentException(what + " lies at byte " + bytes + ", not a multiple of " + align
                    + " (16 elements): the kernels' vector loads need it");
        }
        return bytes / elementBytes;
    }
}
