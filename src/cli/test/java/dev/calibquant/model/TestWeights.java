package dev.calibquant.model;

import com.fasterxml.jackson.databind.ObjectMapper;
import dev.calibquant.io.SafetensorsWriter;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;

/**
 * Random scene-model weights of any config, written as safetensors, with hooks to break them: the tests' way to make
 * models without training one. Scales as in {@code npmodel.random_weights}: fan-in scaled normals, norms near 1.
 */
final class TestWeights {
    static final ObjectMapper JSON = new ObjectMapper();

    final ModelConfig config;
    final Map<String, long[]> shapes;
    final Map<String, float[]> values = new LinkedHashMap<>();
    final Map<String, String> metadata = new LinkedHashMap<>();
    DType dtype = DType.FP16;

    TestWeights(ModelConfig config, long seed) {
        this.config = config;
        this.shapes = new LinkedHashMap<>(WeightNames.expected(config));
        Random random = new Random(seed);
        for (Map.Entry<String, long[]> e : shapes.entrySet()) {
            String name = e.getKey();
            long[] shape = e.getValue();
            float[] a = new float[(int) count(shape)];
            for (int i = 0; i < a.length; i++) {
                double g = random.nextGaussian();
                if (name.endsWith("norm1.weight") || name.endsWith("norm2.weight") || name.endsWith("norm.weight")) {
                    a[i] = (float) (1 + 0.1 * g);
                } else if (name.endsWith(".bias")) {
                    a[i] = (float) (0.05 * g);
                } else if (name.equals("vision.pos_embed") || name.equals("language.embed.weight")) {
                    a[i] = (float) (0.5 * g);
                } else {
                    a[i] = (float) (g / Math.sqrt(shape[1]));
                }
            }
            values.put(name, a);
        }
        metadata.put("format", ModelWeights.FORMAT);
        metadata.put("config", config.toJson());
        try {
            metadata.put("vocab", JSON.writeValueAsString(Vocabulary.WORDS));
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    /** A model small enough to run in milliseconds, on the real task's image and prompt. */
    static ModelConfig tiny() {
        return new ModelConfig(64, 4, 16, 1, 2, 32, 32, 2, 4, 2, 16, 48, Vocabulary.size(), 10000.0, 1e-6f, 1e-6f);
    }

    Path write(Path file) throws IOException {
        SafetensorsWriter writer = new SafetensorsWriter();
        metadata.forEach(writer::metadata);
        Arena arena = Arena.ofAuto();
        for (Map.Entry<String, float[]> e : values.entrySet()) {
            float[] a = e.getValue();
            MemorySegment data = arena.allocate((long) a.length * dtype.byteSize());
            for (int i = 0; i < a.length; i++) {
                Elements.write(data, dtype, i, a[i]);
            }
            writer.add(e.getKey(), dtype, shapes.get(e.getKey()), data);
        }
        writer.write(file);
        return file;
    }

    static long count(long[] shape) {
        long n = 1;
        for (long d : shape) {
            n *= d;
        }
        return n;
    }
}
