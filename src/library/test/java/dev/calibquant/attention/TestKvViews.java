package dev.calibquant.attention;

import dev.calibquant.quant.ChannelQuantizer;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.KvSlice;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.QuantizedSpan;
import dev.calibquant.quant.TestTensors;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

/** Builds seeded random caches and queries for attention tests and benchmarks; everything lives in the arena. */
public final class TestKvViews {
    /** Outlier channels per KV head in random keys (×8), as in real post-RoPE keys. */
    public static final int KEY_OUTLIERS = 4;

    private TestKvViews() {
    }

    /** Full-precision tokens {@code [0, fullTokens)} of a block of {@code capacity}, then one quantized span per length. */
    public static TestKvView random(Arena arena, Random random, DType dtype, int kvHeads, int headDim, int fullTokens,
            int capacity, int[] spanLengths, QuantConfig config) {
        float[] keys = TestTensors.normal(random, kvHeads, capacity, headDim, KEY_OUTLIERS);
        float[] values = TestTensors.normal(random, kvHeads, capacity, headDim, 0);
        MemorySegment k = TestTensors.write(arena, dtype, keys);
        MemorySegment v = TestTensors.write(arena, dtype, values);
        List<QuantizedSpan> spans = new ArrayList<>();
        for (int length : spanLengths) {
            spans.add(randomSpan(arena, random, dtype, kvHeads, headDim, length, config));
        }
        return new TestKvView(kvHeads, headDim, dtype, fullTokens, capacity, k, v, spans);
    }

    public static QuantizedSpan randomSpan(Arena arena, Random random, DType dtype, int kvHeads, int headDim,
            int tokens, QuantConfig config) {
        float[] keys = TestTensors.normal(random, kvHeads, tokens, headDim, KEY_OUTLIERS);
        float[] values = TestTensors.normal(random, kvHeads, tokens, headDim, 0);
        KvSlice k = KvSlice.dense(TestTensors.write(arena, dtype, keys), dtype, kvHeads, tokens, headDim);
        KvSlice v = KvSlice.dense(TestTensors.write(arena, dtype, values), dtype, kvHeads, tokens, headDim);
        return ChannelQuantizer.quantize(config, k, v, arena);
    }

    /** Random normal queries {@code [batch][heads][headDim]} in {@code dtype}. */
    public static MemorySegment queries(Arena arena, Random random, DType dtype, int batch, int heads, int headDim) {
        float[] q = TestTensors.normal(random, batch, heads, headDim, 0);
        return TestTensors.write(arena, dtype, q);
    }

    /** The same cache restricted to one KV head (segments sliced, nothing copied). */
    public static TestKvView singleHead(TestKvView view, int kvh) {
        long rowBytes = (long) view.fullCapacity() * view.headDim() * view.dtype().byteSize();
        List<QuantizedSpan> spans = new ArrayList<>();
        for (QuantizedSpan s : view.visualSpans()) { // every segment is [kvHeads][...]
            spans.add(s.withSegments(1, s.segments().stream()
                    .map(m -> m.asSlice(kvh * (m.byteSize() / s.kvHeads()), m.byteSize() / s.kvHeads())).toList()));
        }
        return new TestKvView(1, view.headDim(), view.dtype(), view.fullTokens(), view.fullCapacity(),
                view.fullKeys().asSlice(kvh * rowBytes, rowBytes), view.fullValues().asSlice(kvh * rowBytes, rowBytes),
                spans);
    }
}
