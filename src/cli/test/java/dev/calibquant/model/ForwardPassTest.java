package dev.calibquant.model;

import static org.assertj.core.api.Assertions.assertThat;

import java.net.URISyntaxException;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/**
 * The Java forward pass against the NumPy reference (tools/model/npmodel.py, an independent straightforward
 * implementation, run in float64) on a random tiny model.
 *
 * <p>Tolerance: both Java and NumPy's float32 pass round every operation to fp32; NumPy's float32 result sits
 * {@code fp32Gap} from float64 on these very inputs, which measures how this network amplifies fp32 rounding.
 * Java sums long dot products sequentially where NumPy's BLAS uses blocked sums: for sums of n ≤ 512 terms the
 * typical error grows like √n against √(log₂ n), at most √(512/9) ≈ 7.5 times more; twice that, 16, is the bound.
 */
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
