package dev.calibquant.selftest;

import dev.calibquant.gpu.DeviceDecodeAttention;
import dev.calibquant.gpu.DeviceKvCache;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.cache.CacheMemoryLimitException;
import dev.calibquant.cache.KvCacheManager;
import dev.calibquant.cache.ModelGeometry;
import dev.calibquant.cache.Sequence;
import dev.calibquant.cache.TokenSpan;
import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.quant.CalibrationPolicy;
import dev.calibquant.quant.DType;
import dev.calibquant.quant.NonFiniteInputException;
import dev.calibquant.quant.QuantConfig;
import dev.calibquant.quant.TestTensors;
import dev.calibquant.testing.GpuFixture;
import dev.calibquant.testing.GpuTest;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The GPU path against the CPU reference, on fresh random inputs with outputs poisoned (NaN) before each launch.
 *
 * <p>Quantization: the GPU computes {@code x/σ + z} in fp32 and rounds half to even; the CPU decides each code in
 * exact arithmetic. They may differ only where the exact quotient lies within the fp32 error of a rounding
 * boundary, and the scales within a few ulps. Attention is then checked on the GPU's own quantized data
 * (downloaded), so quantizer and attention errors are not mixed.
 *
 * <p>Attention tolerance, per output element, from the kernels' arithmetic (fp16 tensor-core products with fp32
 * accumulation; operands not exact in fp16 travel as an fp16 hi/lo pair, ~2^-22 relative):
 * score error {@code E ≤ (D + 4)·2^-23·‖q‖₁·Kmax/√D}; calibration is affine with slope ≤ 1, and its γ, δ carry
 * error E, moving a calibrated score by at most another 2E (δ − γ ≥ τmax in the reference policy's useful range,
 * and the factor is clamped otherwise), softmax turns a score error ε into an output error ≤ 2ε·Vmax; the weighted
 * value sum adds {@code (2^-21 + (BN + N/BN + items + 8)·2^-24)·Vmax}. So
 * {@code tol = (6E + 2^-21 + (BN + N/BN + items + 8)·2^-24)·Vmax}.
 */
@GpuTest
class GpuCalibQuantGpuTest {
    @RegisterExtension
    final GpuFixture gpu = new GpuFixture();

    static Stream<Arguments> cases() {
        CalibrationPolicy ref = CalibrationPolicy.REFERENCE;
        CalibrationPolicy clamp = CalibrationPolicy.CLAMP_AT_ZERO;
        List<GpuScenario.Case> cases = List.of(
                new GpuScenario.Case(1, 8, 4, 128, 1, true, ref, new int[] {3328}, 1, 41, 64, 3),
                new GpuScenario.Case(3, 2, 1, 64, 2, true, clamp, new int[] {1, 7, 255}, 3, 5, 9, 2),
                new GpuScenario.Case(2, 1, 8, 128, 4, false, ref, new int[] {10_000}, 1, 3, 20, 1),
                new GpuScenario.Case(5, 4, 2, 64, 1, true, ref, new int[] {1, 7, 255, 3328}, 3, 17, 30, 2),
                new GpuScenario.Case(64, 8, 4, 128, 1, true, ref, new int[] {3328}, 1, 41, 64, 1),
                new GpuScenario.Case(256, 8, 2, 64, 1, true, clamp, new int[] {255}, 2, 41, 64, 1),
                new GpuScenario.Case(7, 2, 4, 128, 2, false, ref, new int[] {7, 255}, 2, 11, 3, 4),
                new GpuScenario.Case(2, 2, 8, 128, 4, true, ref, new int[] {1, 10_000}, 2, 1, 1, 1),
                new GpuScenario.Case(4, 8, 4, 128, 0, false, ref, new int[] {3328}, 1, 41, 64, 2),
                new GpuScenario.Case(2, 2, 8, 64, 0, false, ref, new int[] {1, 255}, 2, 1, 1, 1));
        // Every case on Hopper's PTX; the Ampere PTX (JIT-compiled by the driver on any newer card) on a subset.
        Stream<Arguments> hopper = cases.stream().map(c -> Arguments.of(KernelCatalog.HOPPER, c));
        Stream<Arguments> ampere = Stream.of(cases.get(1), cases.get(3), cases.get(7), cases.get(9))
                .map(c -> Arguments.of(KernelCatalog.AMPERE, c));
        return Stream.concat(hopper, ampere);
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("cases")
    void gpuMatchesTheCpuReference(String target, GpuScenario.Case c) {
        try (KernelCatalog catalog = KernelCatalog.open(gpu.context(), target)) {
            GpuScenario.Result r = GpuScenario.run(gpu.context(), catalog, c, gpu.random());
            System.out.printf("[calibquant] %s %s: worst error %.3f of tolerance, scales within %.1f ulp, %d work items, mode %d%n",
                    target, c, r.worstRatio(), r.worstScaleUlps(), r.workItems(), r.calibrationMode());
            assertThat(r.passed()).as("seed " + gpu.seed() + " " + target + " " + c + ": " + r.failure()).isTrue();
        }
    }

    @Test
    void badInputIsRejectedBeforeTheGpuSeesIt() {
        ModelGeometry g = new ModelGeometry(2, 8, 2, 128);
        // layer 0 holds 30,720 bytes (20 + 1 reserved fp16 rows, an 80-token 1-bit span); growing by even one row
        // while the old block is copied needs 22,528 more
        long limit = 40_000;
        try (Arena arena = Arena.ofConfined(); DeviceKvCache device = DeviceKvCache.open(gpu.context(), g, limit)) {
            KvCacheManager cache = device.manager();
            DeviceDecodeAttention attention = device.attention(QuantConfig.defaults(1).calibration());
            Sequence s = cache.createSequence(100, List.of(new TokenSpan(10, 90)), QuantConfig.defaults(1), 1);
            float[] k = TestTensors.normal(gpu.random(), 2, 100, 128, 4);
            MemorySegment keys = TestTensors.write(arena, DType.FP16, k);
            MemorySegment values = TestTensors.write(arena, DType.FP16,
                    TestTensors.normal(gpu.random(), 2, 100, 128, 0));
            long deviceBytes = device.usedDeviceBytes();
            assertThatThrownBy(() -> s.fill(0, keys.asSlice(2), values, DType.FP16))
                    .hasMessageContaining("bytes");
            MemorySegment nan = arena.allocate(keys.byteSize());
            nan.copyFrom(keys);
            nan.set(ValueLayout.JAVA_SHORT_UNALIGNED, 2L * (128 * 150 + 7), (short) 0x7e00);
            assertThatThrownBy(() -> s.fill(0, nan, values, DType.FP16)).isInstanceOf(NonFiniteInputException.class)
                    .hasMessageContaining("head 1").hasMessageContaining("token 50");
            assertThat(s.isFilled(0)).isFalse();
            assertThat(device.usedDeviceBytes()).isEqualTo(deviceBytes);
            assertThatThrownBy(() -> s.fill(2, keys, values, DType.FP16)).isInstanceOf(IndexOutOfBoundsException.class);
            s.fill(0, keys, values, DType.FP16);
            assertThatThrownBy(() -> s.fill(0, keys, values, DType.FP16)).isInstanceOf(IllegalStateException.class);
            MemorySegment q = arena.allocate(2L * 8 * 128);
            MemorySegment out = arena.allocate(4L * 8 * 128);
            assertThatThrownBy(() -> attention.decode(1, List.of(s), q, DType.FP16, 8, out))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("not filled");
            assertThatThrownBy(() -> attention.decode(0, List.of(s), q.asSlice(2), DType.FP16, 8, out))
                    .hasMessageContaining("queries");
            MemorySegment kn = arena.allocate(2L * 2 * 128);
            cache.append(0, List.of(s), kn, kn, DType.FP16); // the reserved token
            long before = device.usedDeviceBytes();
            assertThatThrownBy(() -> cache.append(0, List.of(s), kn, kn, DType.FP16)) // growing passes the limit
                    .isInstanceOf(CacheMemoryLimitException.class);
            assertThat(device.usedDeviceBytes()).isEqualTo(before);
            assertThat(s.tokens(0)).isEqualTo(101);
            assertThat(cache.openSequences()).isEqualTo(1);
            s.close();
            s.close();
            assertThatThrownBy(() -> attention.decode(0, List.of(s), q, DType.FP16, 8, out))
                    .isInstanceOf(IllegalStateException.class).hasMessageContaining("closed");
            assertThat(cache.usage().totalBytes()).isZero();
            assertThat(device.usedDeviceBytes()).isZero();
        }
    }
}
