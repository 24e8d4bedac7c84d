package dev.calibquant.model;

import dev.calibquant.io.SafetensorsReader;
import dev.calibquant.quant.Elements;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * A logits fixture written by {@code tools/model/npmodel.py write_fixture}: per sample the image, the tokens
 * (prompt and true answer) and the float64 reference logits at every position; {@code fp32Gap} is how far the same
 * NumPy forward pass in float32 lands from float64 on these inputs.
 */
record ReferenceLogits(List<Sample> samples, double fp32Gap, int visualStart) {

    record Sample(byte[] pixels, int[] tokens, float[] logits) {
    }

    static ReferenceLogits read(Path path) throws IOException {
        try (SafetensorsReader reader = SafetensorsReader.open(path)) {
            int count = Integer.parseInt(reader.metadata().get("samples"));
            List<Sample> samples = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                float[] pixels = floats(reader, "sample" + i + ".pixels");
                byte[] rgb = new byte[pixels.length];
                for (int p = 0; p < pixels.length; p++) {
                    rgb[p] = (byte) (int) pixels[p];
                }
                float[] tokenValues = floats(reader, "sample" + i + ".tokens");
                int[] tokens = new int[tokenValues.length];
                for (int t = 0; t < tokens.length; t++) {
                    tokens[t] = (int) tokenValues[t];
                }
                samples.add(new Sample(rgb, tokens, floats(reader, "sample" + i + ".logits")));
            }
            return new ReferenceLogits(samples, Double.parseDouble(reader.metadata().get("fp32_gap")),
                    Integer.parseInt(reader.metadata().get("visual_start")));
        }
    }

    private static float[] floats(SafetensorsReader reader, String name) {
        var t = reader.tensor(name);
        float[] a = new float[(int) t.elementCount()];
        for (int i = 0; i < a.length; i++) {
            a[i] = Elements.read(t.data(), t.dtype(), i);
        }
        return a;
    }
}
