package dev.calibquant.model;

import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.quant.DType;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

/**
 * The small multimodal model of the scene task (see {@link ModelConfig}), on the CPU in fp32: the vision encoder
 * makes the visual tokens, {@link #prefill} runs the whole prompt with exact attention, and decode steps run
 * against the KV cache (see {@link AnswerGenerator}). Immutable once loaded; safe to use from several threads.
 */
public final class SceneModel {
    /** Where the trained weights ship inside the jar. */
    public static final String BUNDLED_RESOURCE = "dev/calibquant/model/model.safetensors";

    private final ModelConfig config;
    private final VisionEncoder vision;
    private final LanguageModel language;

    public SceneModel(ModelWeights weights) {
        this.config = weights.config();
        this.vision = new VisionEncoder(weights);
        this.language = new LanguageModel(weights);
    }

    /** Loads and checks a weights file; see {@link ModelWeights#load} for the errors. */
    public static SceneModel load(Path weights) throws IOException {
        return new SceneModel(ModelWeights.load(weights));
    }

    /** Whether this build ships trained weights. */
    public static boolean hasBundledWeights() {
        return SceneModel.class.getClassLoader().getResource(BUNDLED_RESOURCE) != null;
    }

    /**
     * Loads the weights that ship in the jar.
     *
     * @throws BundledWeightsMissingException when this build has none yet
     */
    public static SceneModel loadBundled() throws IOException {
        try (InputStream in = SceneModel.class.getClassLoader().getResourceAsStream(BUNDLED_RESOURCE)) {
            if (in == null) {
                throw new BundledWeightsMissingException();
            }
            Path copy = Files.createTempFile("calibquant-model", ".safetensors");
            try {
                Files.copy(in, copy, StandardCopyOption.REPLACE_EXISTING);
                return load(copy);
            } finally {
                Files.deleteIfExists(copy);
            }
        }
    }

    public ModelConfig config() {
        return config;
    }

    /** Where the visual tokens sit in every prompt of this model. */
    public TokenSpan visualSpan() {
        return PromptFormat.visualSpan(config.visualTokens());
    }

    /** The prompt's tokens for a question (see {@link PromptFormat}). */
    public int[] prompt(int[] question) {
        return PromptFormat.prompt(question, config.visualTokens());
    }

    /**
     * Encodes the image and runs the prompt around {@code question} with exact attention.
     *
     * @throws IllegalArgumentException when the image is not {@code imageSize × imageSize} RGB bytes, or a token is
     *     outside the vocabulary
     */
    public Prefill prefill(byte[] rgb, int[] question) {
        float[] visual = vision.encode(rgb);
        return language.prefill(prompt(question), visual, visualSpan());
    }

    /** Prefill of arbitrary tokens (a prompt followed by answer tokens, say) around one image. */
    public Prefill prefillTokens(byte[] rgb, int[] tokens) {
        return language.prefill(tokens, vision.encode(rgb), visualSpan());
    }

    float[] step(int token, int position, Sequence sequence, DType cacheType, DecodeAttention attention) {
        return language.step(token, position, sequence, cacheType, attention);
    }

    /** The trained weights are not in this build. */
    public static final class BundledWeightsMissingException extends IOException {
        BundledWeightsMissingException() {
            super("the built-in model weights are not trained yet: this build has no " + BUNDLED_RESOURCE
                    + ". Train them with tools/model/train.py on a GPU host (tools/model/MODEL_CARD.md says how) "
                    + "and put model.safetensors at src/cli/main/resources/" + BUNDLED_RESOURCE
                    + ", or pass --weights PATH");
        }
    }
}
