package dev.calibquant.model;

import com.fasterxml.jackson.databind.ObjectMapper;
import dev.calibquant.io.SafetensorsReader;
import dev.calibquant.io.SafetensorsTensor;
import dev.calibquant.quant.Elements;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

/**
 * A scene model's weights, read from safetensors into fp32 arrays and checked in full: the metadata {@code format},
 * {@code config} and {@code vocab}; every expected tensor present with its exact shape; no unexpected tensor; every
 * value finite. F16, BF16 and F32 tensors are read (the shipped file is F16).
 */
public final class ModelWeights {
    public static final String FORMAT = "calibquant-scene-vlm/1";

    private static final ObjectMapper JSON = new ObjectMapper();

    private final ModelConfig config;
    private final Map<String, float[]> tensors;

    public ModelWeights(ModelConfig config, Map<String, float[]> tensors) {
        this.config = config;
        this.tensors = Collections.unmodifiableMap(new HashMap<>(tensors));
    }

    public ModelConfig config() {
        return config;
    }

    /** The tensor's elements, row-major. */
    public float[] get(String name) {
        float[] t = tensors.get(name);
        if (t == null) {
            throw new IllegalArgumentException("no weight '" + name + "'");
        }
        return t;
    }

    /**
     * Reads and checks {@code path}.
     *
     * @throws java.nio.file.NoSuchFileException when there is no such file
     * @throws dev.calibquant.io.SafetensorsFormatException when the file is not well-formed safetensors (truncated,
     *     corrupt header, unsupported dtype)
     * @throws WeightsFormatException when it is safetensors but not a scene model (names the tensor or key)
     */
    public static ModelWeights load(Path path) throws IOException {
        try (SafetensorsReader reader = SafetensorsReader.open(path)) {
            return read(reader);
        }
    }

    static ModelWeights read(SafetensorsReader reader) throws WeightsFormatException {
        Path path = reader.path();
        Map<String, String> meta = reader.metadata();
        String format = meta.get("format");
        if (!FORMAT.equals(format)) {
            throw new WeightsFormatException(path + " is not scene-model weights: metadata 'format' is "
                    + (format == null ? "missing" : "'" + format + "'") + ", expected '" + FORMAT + "'");
        }
        String configJson = meta.get("config");
        if (configJson == null) {
            throw new WeightsFormatException(path + " has no 'config' metadata");
        }
        ModelConfig config;
        try {
            config = ModelConfig.fromJson(configJson);
        } catch (IllegalArgumentException e) {
            throw new WeightsFormatException(path + ": " + e.getMessage(), e);
        }
        checkVocabulary(path, meta.get("vocab"), config);
        Map<String, long[]> expected = WeightNames.expected(config);
        TreeSet<String> unexpected = new TreeSet<>(reader.names());
        unexpected.removeAll(expected.keySet());
        if (!unexpected.isEmpty()) {
            throw new WeightsFormatException(path + " has unexpected tensors " + unexpected);
        }
        List<String> missing = new ArrayList<>();
        for (String name : expected.keySet()) {
            if (!reader.contains(name)) {
                missing.add(name);
            }
        }
        if (!missing.isEmpty()) {
            throw new WeightsFormatException(path + " lacks tensors " + missing);
        }
        Map<String, float[]> tensors = new HashMap<>();
        for (Map.Entry<String, long[]> e : expected.entrySet()) {
            SafetensorsTensor t = reader.tensor(e.getKey());
            if (!Arrays.equals(t.shape(), e.getValue())) {
                throw new WeightsFormatException(path + ": tensor '" + e.getKey() + "' has shape "
                        + Arrays.toString(t.shape()) + ", the config needs " + Arrays.toString(e.getValue()));
            }
            float[] values = new float[Math.toIntExact(t.elementCount())];
            for (int i = 0; i < values.length; i++) {
                values[i] = Elements.read(t.data(), t.dtype(), i);
                if (!Float.isFinite(values[i])) {
                    throw new WeightsFormatException(path + ": tensor '" + e.getKey() + "' holds " + values[i]
                            + " at element " + i);
                }
            }
            tensors.put(e.getKey(), values);
        }
        return new ModelWeights(config, tensors);
    }

    private static void checkVocabulary(Path path, String vocabJson, ModelConfig config)
            throws WeightsFormatException {
        if (vocabJson == null) {
            throw new WeightsFormatException(path + " has no 'vocab' metadata");
        }
        List<String> vocab;
        try {
            vocab = Arrays.asList(JSON.readValue(vocabJson, String[].class));
        } catch (IOException e) {
            throw new WeightsFormatException(path + ": metadata 'vocab' is not a JSON list of strings", e);
        }
        if (!vocab.equals(Vocabulary.WORDS)) {
            throw new WeightsFormatException(path + " was trained on another vocabulary (" + vocab.size()
                    + " words) than this build's scene task (" + Vocabulary.size() + " words)");
        }
        if (config.vocabSize() != Vocabulary.size()) {
            throw new WeightsFormatException(path + ": config vocab_size " + config.vocabSize() + " is not the "
                    + Vocabulary.size() + " words of its vocabulary");
        }
    }
}
