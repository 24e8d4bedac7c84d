package dev.calibquant.model;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.RandomSeedExtension;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.QuantConfig;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.api.io.TempDir;

class AnswerGeneratorTest {

    @RegisterExtension
    final RandomSeedExtension seed = new RandomSeedExtension();

    @TempDir
    Path dir;

    /**
     * {@link Answer#decodeNanos()} is the time of the decode steps alone (the demo divides steps by it): filling and
     * quantizing the cache belongs to prefill. With one answer token there is no decode step, so no decode time.
     */
    @Test
    void decodeTimeCountsDecodeStepsOnly() throws Exception {
        SceneModel model = SceneModel.load(new TestWeights(TestWeights.tiny(), seed.seed())
                .write(dir.resolve("w.safetensors")));
        TaskSample sample = new TaskGenerator(seed.seed()).sample(0);
        Prefill prefill = model.prefill(sample.image(), sample.question());
        try (KvCacheManager cache = KvCacheManager.onHost(model.config().geometry(), DType.FP16)) {
            AnswerGenerator generator = new AnswerGenerator(model, cache, DecodeAttentionFactory.cpu(), 1);
            for (QuantConfig quant : new QuantConfig[] {null, QuantConfig.defaults(1)}) {
                Answer answer = generator.answer(prefill, quant);
                assertThat(answer.decodeSteps()).isZero();
                assertThat(answer.decodeNanos()).as("quant %s", quant).isZero();
            }
        }
    }
}
