package dev.calibquant.model;

import static org.assertj.core.api.Assertions.assertThat;

import java.net.URISyntaxException;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/** The Java forward pass against the NumPy reference (tools/model/npmodel.py) on a random tiny model. */
class ForwardPassTest {

    static Path resource(String name) throws URISyntaxException {
        return Path.of(ForwardPassTest.class.getResource(name).toURI());
    }

    @Test
    void prefillLogitsMatchTheNumpyReference() throws Exception {
        SceneModel model = SceneModel.load(resource("tiny-random.safetensors"));
        ReferenceLogits reference = ReferenceLogits.read(resource("tiny-random-logits.safetensors"));
        double worst = 0;
        for (ReferenceLogits.Sample s : reference.samples()) {
            Prefill p = model.prefillTokens(s.pixels(), s.tokens());
            for (int i = 0; i < s.logits().length; i++) {
                worst = Math.max(worst, Math.abs(p.logits()[i] - s.logits()[i]));
            }
        }
        System.out.println("tiny model: largest |java - float64| " + worst + ", numpy fp32 gap "
                + reference.fp32Gap());
        assertThat(worst).isLessThan(16 * reference.fp32Gap());
    }
}
