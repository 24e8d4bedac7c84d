package dev.calibquant.model;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.cache.RandomSeedExtension;
import dev.calibquant.io.SafetensorsFormatException;
import dev.calibquant.quant.DType;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Arrays;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.api.io.TempDir;

class ModelWeightsTest {

    @RegisterExtension
    final RandomSeedExtension seed = new RandomSeedExtension();

    @TempDir
    Path dir;

    private TestWeights weights() {
        return new TestWeights(TestWeights.tiny(), seed.seed());
    }

    private Path file() {
        return dir.resolve("w.safetensors");
    }

    @Test
    void goodWeightsLoadInEveryFloatType() throws Exception {
        for (DType dtype : DType.values()) {
            TestWeights w = weights();
            w.dtype = dtype;
            ModelWeights loaded = ModelWeights.load(w.write(file()));
            assertThat(loaded.config()).isEqualTo(TestWeights.tiny());
            float[] expected = w.values.get("language.lm_head.weight");
            float[] got = loaded.get("language.lm_head.weight");
            for (int i = 0; i < expected.length; i++) {
                float rounded = switch (dtype) {
                    case FP16 -> Float.float16ToFloat(Float.floatToFloat16(expected[i]));
                    case BF16 -> dev.calibquant.quant.Half.bf16ToFloat(dev.calibquant.quant.Half.floatToBf16(expected[i]));
                    case FP32 -> expected[i];
                };
                assertThat(got[i]).isEqualTo(rounded);
            }
        }
    }

    @Test
    void missingFile() {
        assertThatThrownBy(() -> ModelWeights.load(dir.resolve("absent.safetensors")))
                .isInstanceOf(NoSuchFileException.class);
    }

    @Test
    void truncatedFile() throws Exception {
        Path f = weights().write(file());
        byte[] all = Files.readAllBytes(f);
        Files.write(f, Arrays.copyOf(all, all.length - 100));
        assertThatThrownBy(() -> ModelWeights.load(f)).isInstanceOf(SafetensorsFormatException.class)
                .hasMessageContaining("truncated");
    }

    @Test
    void notSafetensors() throws Exception {
        Files.writeString(file(), "this is not a model, just some text that is long enough");
        assertThatThrownBy(() -> ModelWeights.load(file())).isInstanceOf(SafetensorsFormatException.class);
    }

    @Test
    void unsupportedDtypeIsNamed() throws Exception {
        String header = "{\"language.norm.weight\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}";
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        byte[] bytes = new byte[8 + h.length + 8];
        for (int i = 0; i < 8; i++) {
            bytes[i] = (byte) ((long) h.length >>> (8 * i));
        }
        System.arraycopy(h, 0, bytes, 8, h.length);
        Files.write(file(), bytes);
        assertThatThrownBy(() -> ModelWeights.load(file())).isInstanceOf(SafetensorsFormatException.class)
                .hasMessageContaining("language.norm.weight").hasMessageContaining("I64");
    }

    @Test
    void missingTensorIsNamed() throws Exception {
        TestWeights w = weights();
        w.values.remove("language.layers.1.attn.k.weight");
        assertThatThrownBy(() -> ModelWeights.load(w.write(file()))).isInstanceOf(WeightsFormatException.class)
                .hasMessageContaining("lacks tensors [language.layers.1.attn.k.weight]");
    }

    @Test
    void unexpectedTensorIsNamed() throws Exception {
        TestWeights w = weights();
        w.values.put("language.layers.9.attn.k.weight", new float[] {1f});
        w.shapes.put("language.layers.9.attn.k.weight", new long[] {1});
        assertThatThrownBy(() -> ModelWeights.load(w.write(file()))).isInstanceOf(WeightsFormatException.class)
                .hasMessageContaining("unexpected tensors [language.layers.9.attn.k.weight]");
    }

    @Test
    void wrongShapeIsNamed() throws Exception {
        TestWeights w = weights();
        long[] shape = w.shapes.get("vision.pos_embed");
        w.shapes.put("vision.pos_embed", new long[] {shape[1], shape[0]});
        assertThatThrownBy(() -> ModelWeights.load(w.write(file()))).isInstanceOf(WeightsFormatException.class)
                .hasMessageContaining("'vision.pos_embed' has shape [16, 256], the config needs [256, 16]");
    }

    @Test
    void nonFiniteWeightIsNamed() throws Exception {
        TestWeights w = weights();
        w.values.get("projector.fc1.bias")[3] = Float.NaN;
        assertThatThrownBy(() -> ModelWeights.load(w.write(file()))).isInstanceOf(WeightsFormatException.class)
                .hasMessageContaining("'projector.fc1.bias' holds NaN at element 3");
    }

    @Test
    void badMetadata() throws Exception {
        TestWeights w = weights();
        w.metadata.remove("format");
        assertThatThrownBy(() -> ModelWeights.load(w.write(file()))).isInstanceOf(WeightsFormatException.class)
                .hasMessageContaining("metadata 'format' is missing");
        TestWeights other = weights();
        other.metadata.put("vocab", "[\"a\", \"b\"]");
        assertThatThrownBy(() -> ModelWeights.load(other.write(file()))).isInstanceOf(WeightsFormatException.class)
                .hasMessageContaining("another vocabulary");
        TestWeights broken = weights();
        broken.metadata.put("config", broken.config.toJson().replace("\"layers\":2", "\"layers\":-2"));
        assertThatThrownBy(() -> ModelWeights.load(broken.write(file()))).isInstanceOf(WeightsFormatException.class)
                .hasMessageContaining("'layers' must be > 0");
        TestWeights unknown = weights();
        unknown.metadata.put("config", unknown.config.toJson().replace("{", "{\"dropout\":0.1,"));
        assertThatThrownBy(() -> ModelWeights.load(unknown.write(file()))).isInstanceOf(WeightsFormatException.class)
                .hasMessageContaining("unknown key 'dropout'");
    }

    @Test
    void wrongImageSizeIsRefused() throws Exception {
        SceneModel model = new SceneModel(ModelWeights.load(weights().write(file())));
        assertThatThrownBy(() -> model.prefill(new byte[32 * 32 * 3], new int[] {Vocabulary.id("what")}))
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("64×64 RGB images (12288 bytes), got 3072 bytes");
        assertThatThrownBy(() -> model.prefill(new byte[64 * 64 * 3], new int[] {999}))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("token id 999");
    }

    @Test
    void bundledWeightsMissingSaysSo() {
        if (SceneModel.hasBundledWeights()) {
            return; // trained weights shipped: LogitsFixtureTest checks them
        }
        assertThatThrownBy(SceneModel::loadBundled).isInstanceOf(SceneModel.BundledWeightsMissingException.class)
                .hasMessageContaining("not trained yet");
    }
}
