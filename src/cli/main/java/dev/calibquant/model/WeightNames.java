package dev.calibquant.model;

import java.util.LinkedHashMap;
import java.util.Map;

/** Every tensor a weights file of a given {@link ModelConfig} holds, with its shape; the PyTorch module's names. */
public final class WeightNames {
    private WeightNames() {
    }

    public static Map<String, long[]> expected(ModelConfig c) {
        Map<String, long[]> m = new LinkedHashMap<>();
        int vd = c.visionDim();
        m.put("vision.patch_embed.weight", shape(vd, c.patchDim()));
        m.put("vision.patch_embed.bias", shape(vd));
        m.put("vision.pos_embed", shape(c.visualTokens(), vd));
        for (int i = 0; i < c.visionLayers(); i++) {
            String b = "vision.blocks." + i + ".";
            m.put(b + "norm1.weight", shape(vd));
            m.put(b + "norm1.bias", shape(vd));
            m.put(b + "attn.qkv.weight", shape(3L * vd, vd));
            m.put(b + "attn.qkv.bias", shape(3L * vd));
            m.put(b + "attn.proj.weight", shape(vd, vd));
            m.put(b + "attn.proj.bias", shape(vd));
            m.put(b + "norm2.weight", shape(vd));
            m.put(b + "norm2.bias", shape(vd));
            m.put(b + "mlp.fc1.weight", shape(c.visionMlp(), vd));
            m.put(b + "mlp.fc1.bias", shape(c.visionMlp()));
            m.put(b + "mlp.fc2.weight", shape(vd, c.visionMlp()));
            m.put(b + "mlp.fc2.bias", shape(vd));
        }
        m.put("vision.norm.weight", shape(vd));
        m.put("vision.norm.bias", shape(vd));
        m.put("projector.norm.weight", shape(vd));
        m.put("projector.norm.bias", shape(vd));
        m.put("projector.fc1.weight", shape(c.hidden(), vd));
        m.put("projector.fc1.bias", shape(c.hidden()));
        m.put("projector.fc2.weight", shape(c.hidden(), c.hidden()));
        m.put("projector.fc2.bias", shape(c.hidden()));
        m.put("language.embed.weight", shape(c.vocabSize(), c.hidden()));
        long q = (long) c.queryHeads() * c.headDim();
        long kv = (long) c.kvHeads() * c.headDim();
        for (int i = 0; i < c.layers(); i++) {
            String b = "language.layers." + i + ".";
            m.put(b + "attn_norm.weight", shape(c.hidden()));
            m.put(b + "attn.q.weight", shape(q, c.hidden()));
            m.put(b + "attn.k.weight", shape(kv, c.hidden()));
            m.put(b + "attn.v.weight", shape(kv, c.hidden()));
            m.put(b + "attn.o.weight", shape(c.hidden(), q));
            m.put(b + "mlp_norm.weight", shape(c.hidden()));
            m.put(b + "mlp.gate.weight", shape(c.intermediate(), c.hidden()));
            m.put(b + "mlp.up.weight", shape(c.intermediate(), c.hidden()));
            m.put(b + "mlp.down.weight", shape(c.hidden(), c.intermediate()));
        }
        m.put("language.norm.weight", shape(c.hidden()));
        m.put("language.lm_head.weight", shape(c.vocabSize(), c.hidden()));
        return m;
    }

    private static long[] shape(long... dims) {
        return dims;
    }
}
