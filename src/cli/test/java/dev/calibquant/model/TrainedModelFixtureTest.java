package dev.calibquant.model;

import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.net.URL;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/**
 * The shipped model against the reference logits that {@code tools/model/train.py} wrote next to it (NumPy float64
 * on the same fp16 weights; PyTorch was checked against the same numbers on the GPU host). Skipped, saying so, while
 * this build has no trained weights; the weights and their fixture must ship together.
 */
class TrainedModelFixtureTest {
    static final String FIXTURE = "logits_fixture.safetensors";

    @Test
    void shippedModelMatchesItsReferenceLogits() throws Exception {
        URL fixture = TrainedModelFixtureTest.class.getResource(FIXTURE);
        if (!SceneModel.hasBundledWeights()) {
            assertThat(fixture).as("a logits fixture without the weights it was made from").isNull();
            assumeTrue(false, "no trained weights in this build yet (" + SceneModel.BUNDLED_RESOURCE + ")");
        }
        assertThat(fixture).as("the trained weights ship with src/cli/test/resources/dev/calibquant/model/" + FIXTURE)
                .isNotNull();
        SceneModel model = SceneModel.loadBundled();
        ReferenceLogits reference = ReferenceLogits.read(Path.of(fixture.toURI()));
        double worst = 0;
        for (ReferenceLogits.Sample s : reference.samples()) {
            Prefill p = model.prefillTokens(s.pixels(), s.tokens());
            for (int i = 0; i < s.logits().length; i++) {
                worst = Math.max(worst, Math.abs(p.logits()[i] - s.logits()[i]));
            }
        }
        System.out.println("trained model: largest |java - float64| " + worst + ", numpy fp32 gap "
                + reference.fp32Gap());
        // Same bound as ForwardPassTest: 16 × the gap of NumPy's own fp32 pass (see there).
        assertThat(worst).isLessThan(16 * reference.fp32Gap());
    }
}
