package dev.calibquant.model;

import java.util.stream.IntStream;

/**
 * The vision side: an RGB image → {@link ModelConfig#visualTokens()} embeddings of the language model's width
 * (ViT encoder, then the projector). fp32.
 */
final class VisionEncoder {
    private record Block(float[] norm1Weight, float[] norm1Bias, Linear qkv, Linear proj, float[] norm2Weight,
            float[] norm2Bias, Linear fc1, Linear fc2) {
    }

    private final ModelConfig config;
    private final Linear patchEmbed;
    private final float[] positions;
    private final Block[] blocks;
    private final float[] normWeight;
    private final float[] normBias;
    private final float[] projectorNormWeight;
    private final float[] projectorNormBias;
    private final Linear projector1;
    private final Linear projector2;

    VisionEncoder(ModelWeights w) {
        ModelConfig c = w.config();
        this.config = c;
        int vd = c.visionDim();
        patchEmbed = new Linear(w.get("vision.patch_embed.weight"), w.get("vision.patch_embed.bias"), vd,
                c.patchDim());
        positions = w.get("vision.pos_embed");
        blocks = new Block[c.visionLayers()];
        for (int i = 0; i < blocks.length; i++) {
            String b = "vision.blocks." + i + ".";
            blocks[i] = new Block(w.get(b + "norm1.weight"), w.get(b + "norm1.bias"),
                    new Linear(w.get(b + "attn.qkv.weight"), w.get(b + "attn.qkv.bias"), 3 * vd, vd),
                    new Linear(w.get(b + "attn.proj.weight"), w.get(b + "attn.proj.bias"), vd, vd),
                    w.get(b + "norm2.weight"), w.get(b + "norm2.bias"),
                    new Linear(w.get(b + "mlp.fc1.weight"), w.get(b + "mlp.fc1.bias"), c.visionMlp(), vd),
                    new Linear(w.get(b + "mlp.fc2.weight"), w.get(b + "mlp.fc2.bias"), vd, c.visionMlp()));
        }
        normWeight = w.get("vision.norm.weight");
        normBias = w.get("vision.norm.bias");
        projectorNormWeight = w.get("projector.norm.weight");
        projectorNormBias = w.get("projector.norm.bias");
        projector1 = new Linear(w.get("projector.fc1.weight"), w.get("projector.fc1.bias"), c.hidden(), vd);
        projector2 = new Linear(w.get("projector.fc2.weight"), w.get("projector.fc2.bias"), c.hidden(), c.hidden());
    }

    /**
     * @param rgb {@code [imageSize][imageSize][3]} bytes, row-major
     * @return {@code [visualTokens][hidden]}
     * @throws IllegalArgumentException when the image is not {@code imageSize × imageSize} RGB
     */
    float[] encode(byte[] rgb) {
        int size = config.imageSize();
        if (rgb.length != size * size * 3) {
            throw new IllegalArgumentException("the model takes " + size + "×" + size + " RGB images (" + size * size * 3
                    + " bytes), got " + rgb.length + " bytes");
        }
        int tokens = config.visualTokens();
        int vd = config.visionDim();
        float[] x = patchEmbed.apply(patches(rgb), tokens);
        Ops.addInPlace(x, positions);
        int heads = config.visionHeads();
        int headDim = vd / heads;
        for (Block b : blocks) {
            float[] qkv = b.qkv.apply(Ops.layerNorm(x, vd, b.norm1Weight, b.norm1Bias, config.layerNormEps()), tokens);
            float[] attended = new float[tokens * vd];
            // qkv rows are [q | k | v], each [heads][headDim]
            IntStream.range(0, heads).parallel().forEach(h -> Ops.attendHead(qkv, 3 * vd, h * headDim, qkv, 3 * vd,
                    vd + h * headDim, qkv, 3 * vd, 2 * vd + h * headDim, tokens, tokens, headDim, false, attended, vd,
                    h * headDim));
            Ops.addInPlace(x, b.proj.apply(attended, tokens));
            float[] hidden = b.fc1.apply(Ops.layerNorm(x, vd, b.norm2Weight, b.norm2Bias, config.layerNormEps()),
                    tokens);
            Ops.geluTanh(hidden);
            Ops.addInPlace(x, b.fc2.apply(hidden, tokens));
        }
        x = Ops.layerNorm(x, vd, normWeight, normBias, config.layerNormEps());
        float[] p = projector1.apply(Ops.layerNorm(x, vd, projectorNormWeight, projectorNormBias,
                config.layerNormEps()), tokens);
        Ops.geluTanh(p);
        return projector2.apply(p, tokens);
    }

    /** {@code [tokens][patch·patch·3]}: patch (ty, tx) row-major, inside it (dy, dx, channel), pixels scaled to [−1, 1]. */
    private float[] patches(byte[] rgb) {
        int p = config.patchSize();
        int side = config.imageSize() / p;
        int size = config.imageSize();
        int dim = config.patchDim();
        float[] out = new float[side * side * dim];
        for (int ty = 0; ty < side; ty++) {
            for (int tx = 0; tx < side; tx++) {
                int o = (ty * side + tx) * dim;
                for (int dy = 0; dy < p; dy++) {
                    for (int dx = 0; dx < p; dx++) {
                        for (int c = 0; c < 3; c++) {
                            int pixel = rgb[((ty * p + dy) * size + tx * p + dx) * 3 + c] & 0xFF;
                            out[o + (dy * p + dx) * 3 + c] = (pixel - 127.5f) / 127.5f;
                        }
                    }
                }
            }
        }
        return out;
    }
}
