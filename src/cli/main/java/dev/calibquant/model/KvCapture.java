package dev.calibquant.model;

import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.io.SafetensorsWriter;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Writes a capture of this model's real KV cache in the format of {@code calibquant eval}: per layer the prompt's
 * keys (after RoPE) and values {@code layers.{i}.k/v [kv_heads, tokens, head_dim]} in fp16, and the queries of the
 * first decode step {@code layers.{i}.q [q_heads, head_dim]} in fp32; metadata {@code visual_spans}.
 */
public final class KvCapture {
    private KvCapture() {
    }

    public static void write(Path path, SceneModel model, TaskSample sample) throws IOException {
        ModelConfig c = model.config();
        Prefill prefill = model.prefill(sample.image(), sample.question());
        List<float[]> queries = new ArrayList<>();
        DecodeAttentionFactory recording = calibration -> {
            DecodeAttention inner = DecodeAttentionFactory.cpu().create(calibration);
            return (batch, q, type, heads, out) -> {
                float[] copy = new float[heads * c.headDim()];
                for (int i = 0; i < copy.length; i++) {
                    copy[i] = Elements.read(q, type, i);
                }
                queries.add(copy);
                inner.decode(batch, q, type, heads, out);
            };
        };
        try (KvCacheManager cache = KvCacheManager.onHost(c.geometry(), DType.FP16)) {
            AnswerGenerator generator = new AnswerGenerator(model, cache, recording, 2);
            generator.answer(prefill, null); // one decode step: one query per layer
        }
        if (queries.size() != c.layers()) {
            throw new IllegalStateException("the first decode step made " + queries.size() + " attention calls, not "
                    + c.layers() + " (the answer ended at its first token?)");
        }
        TokenSpan span = model.visualSpan();
        SafetensorsWriter writer = new SafetensorsWriter().metadata("visual_spans", "[[" + span.start() + ", "
                + span.end() + "]]").metadata("source", "calibquant demo --capture: built-in scene model, test sample "
                + sample.index() + ": " + sample.questionText());
        try (Arena arena = Arena.ofConfined()) {
            long[] kvShape = {c.kvHeads(), prefill.tokens(), c.headDim()};
            for (int l = 0; l < c.layers(); l++) {
                writer.add("layers." + l + ".k", DType.FP16, kvShape, segment(arena, prefill.keys()[l], DType.FP16));
                writer.add("layers." + l + ".v", DType.FP16, kvShape, segment(arena, prefill.values()[l], DType.FP16));
                writer.add("layers." + l + ".q", DType.FP32, new long[] {c.queryHeads(), c.headDim()},
                        segment(arena, queries.get(l), DType.FP32));
            }
            writer.write(path);
        }
    }

    private static MemorySegment segment(Arena arena, float[] values, DType dtype) {
        MemorySegment s = arena.allocate((long) values.length * dtype.byteSize());
        for (int i = 0; i < values.length; i++) {
            Elements.write(s, dtype, i, values[i]);
        }
        return s;
    }
}
