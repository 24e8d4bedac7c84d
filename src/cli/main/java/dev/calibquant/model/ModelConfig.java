package dev.calibquant.model;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.calibquant.cache.ModelGeometry;
import java.util.Iterator;
import java.util.Set;

/**
 * The shape of the scene model, stored as JSON in the weights file's metadata ({@code config}).
 *
 * <p>Vision: {@code imageSize²} RGB pixels cut into {@code patchSize²} patches ({@link #visualTokens()} of them), a
 * linear patch embedding plus learned positions, {@code visionLayers} pre-LayerNorm transformer blocks (width
 * {@code visionDim}, {@code visionHeads} heads, tanh-GELU MLP of {@code visionMlp}), a final LayerNorm; projector
 * LayerNorm → Linear → GELU → Linear to {@code hidden}. Language: {@code layers} pre-RMSNorm decoder blocks, RoPE
 * ({@code ropeTheta}), grouped-query attention ({@code queryHeads} over {@code kvHeads}, head dim {@code headDim}),
 * SwiGLU MLP of {@code intermediate}, final RMSNorm, an untied LM head over {@code vocabSize} tokens.
 */
public record ModelConfig(
        int imageSize,
        int patchSize,
        int visionDim,
        int visionLayers,
        int visionHeads,
        int visionMlp,
        int hidden,
        int layers,
        int queryHeads,
        int kvHeads,
        int headDim,
        int intermediate,
        int vocabSize,
        double ropeTheta,
        float rmsEps,
        float layerNormEps) {

    private static final ObjectMapper JSON = new ObjectMapper();
    private static final Set<String> KEYS = Set.of("image_size", "patch_size", "vision_dim", "vision_layers",
            "vision_heads", "vision_mlp", "hidden", "layers", "query_heads", "kv_heads", "head_dim", "intermediate",
            "vocab_size", "rope_theta", "rms_eps", "ln_eps");

    public ModelConfig {
        positive("image_size", imageSize);
        positive("patch_size", patchSize);
        positive("vision_dim", visionDim);
        positive("vision_layers", visionLayers);
        positive("vision_heads", visionHeads);
        positive("vision_mlp", visionMlp);
        positive("hidden", hidden);
        positive("layers", layers);
        positive("query_heads", queryHeads);
        positive("kv_heads", kvHeads);
        positive("head_dim", headDim);
        positive("intermediate", intermediate);
        positive("vocab_size", vocabSize);
        if (imageSize % patchSize != 0) {
            throw new IllegalArgumentException("image_size " + imageSize + " is not a multiple of patch_size "
                    + patchSize);
        }
        if (visionDim % visionHeads != 0) {
            throw new IllegalArgumentException("vision_dim " + visionDim + " is not a multiple of vision_heads "
                    + visionHeads);
        }
        if (queryHeads % kvHeads != 0) {
            throw new IllegalArgumentException("query_heads " + queryHeads + " is not a multiple of kv_heads "
                    + kvHeads);
        }
        if (headDim % 2 != 0) {
            throw new IllegalArgumentException("head_dim " + headDim + " must be even for RoPE");
        }
        if (!(ropeTheta > 1 && Double.isFinite(ropeTheta))) {
            throw new IllegalArgumentException("rope_theta must be finite and > 1, got " + ropeTheta);
        }
        if (!(rmsEps > 0 && layerNormEps > 0 && Float.isFinite(rmsEps) && Float.isFinite(layerNormEps))) {
            throw new IllegalArgumentException("rms_eps and ln_eps must be finite and > 0, got " + rmsEps + ", "
                    + layerNormEps);
        }
    }

    /** The trained model's shape (tools/model/train.py). */
    public static ModelConfig scene() {
        return new ModelConfig(64, 4, 128, 4, 4, 512, 256, 4, 4, 2, 128, 512, Vocabulary.size(), 10000.0, 1e-6f,
                1e-6f);
    }

    public int visualTokens() {
        int side = imageSize / patchSize;
        return side * side;
    }

    public int patchDim() {
        return patchSize * patchSize * 3;
    }

    public ModelGeometry geometry() {
        return new ModelGeometry(layers, queryHeads, kvHeads, headDim);
    }

    /** @throws IllegalArgumentException naming the key that is missing, unknown, or of the wrong kind */
    public static ModelConfig fromJson(String json) {
        JsonNode root;
        try {
            root = JSON.readTree(json);
        } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
            throw new IllegalArgumentException("config is not valid JSON: " + e.getOriginalMessage(), e);
        }
        if (root == null || !root.isObject()) {
            throw new IllegalArgumentException("config is not a JSON object");
        }
        for (Iterator<String> names = root.fieldNames(); names.hasNext(); ) {
            String name = names.next();
            if (!KEYS.contains(name)) {
                throw new IllegalArgumentException("config has unknown key '" + name + "'");
            }
        }
        return new ModelConfig(integer(root, "image_size"), integer(root, "patch_size"), integer(root, "vision_dim"),
                integer(root, "vision_layers"), integer(root, "vision_heads"), integer(root, "vision_mlp"),
                integer(root, "hidden"), integer(root, "layers"), integer(root, "query_heads"),
                integer(root, "kv_heads"), integer(root, "head_dim"), integer(root, "intermediate"),
                integer(root, "vocab_size"), number(root, "rope_theta"), (float) number(root, "rms_eps"),
                (float) number(root, "ln_eps"));
    }

    public String toJson() {
        ObjectNode o = JSON.createObjectNode();
        o.put("image_size", imageSize).put("patch_size", patchSize).put("vision_dim", visionDim)
                .put("vision_layers", visionLayers).put("vision_heads", visionHeads).put("vision_mlp", visionMlp)
                .put("hidden", hidden).put("layers", layers).put("query_heads", queryHeads).put("kv_heads", kvHeads)
                .put("head_dim", headDim).put("intermediate", intermediate).put("vocab_size", vocabSize)
                .put("rope_theta", ropeTheta).put("rms_eps", (double) rmsEps).put("ln_eps", (double) layerNormEps);
        return o.toString();
    }

    private static int integer(JsonNode root, String key) {
        JsonNode v = root.get(key);
        if (v == null || !v.isIntegralNumber() || !v.canConvertToInt()) {
            throw new IllegalArgumentException("config needs an integer '" + key + "', got " + v);
        }
        return v.intValue();
    }

    private static double number(JsonNode root, String key) {
        JsonNode v = root.get(key);
        if (v == null || !v.isNumber()) {
            throw new IllegalArgumentException("config needs a number '" + key + "', got " + v);
        }
        return v.doubleValue();
    }

    private static void positive(String name, int value) {
        if (value <= 0) {
            throw new IllegalArgumentException("config '" + name + "' must be > 0, got " + value);
        }
    }
}
