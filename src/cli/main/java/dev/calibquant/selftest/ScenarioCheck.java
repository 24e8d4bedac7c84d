package dev.calibquant.selftest;

import dev.calibquant.kernels.KernelCatalog;
import dev.calibquant.kernels.KernelManifest;
import dev.calibquant.quant.CalibrationPolicy;
import java.util.Random;
import java.util.Set;

/**
 * Checks a decode-side kernel (and the quantizer and append kernels it runs with) through one {@link GpuScenario}
 * chosen so that the variant under test is the one launched: its head dim and bits, and a batch shaped to make
 * the planner pick its calibration mode.
 */
final class ScenarioCheck implements KernelCheck {
    private static final Set<String> FUNCTIONS = Set.of("quantize_pack", "calibquant_minmax", "calibquant_decode",
            "fp16_decode", "append_token");

    @Override
    public boolean handles(KernelManifest.Kernel kernel) {
        return FUNCTIONS.contains(kernel.function()) && !kernel.name().startsWith("x_")
                && !(kernel.function().equals("quantize_pack") && constexpr(kernel, "BITS", 1) == 8);
    }

    @Override
    public Result run(KernelCatalog catalog, KernelManifest.Kernel kernel, Random random) {
        int d = constexpr(kernel, "D", 128);
        int bits = constexpr(kernel, "BITS", 1);
        int wantMode = switch (kernel.function()) {
            case "calibquant_minmax" -> 1;
            case "calibquant_decode" -> constexpr(kernel, "MM_MODE", 1);
            default -> -1;
        };
        // the group picks the variant: 4 head slots for G <= 4 where a variant ships them, else 8 (G = 6 then,
        // so the variant under test is the one the scenario launches, with a group that is not a power of two)
        int group = constexpr(kernel, "HS", 8) == 4 ? 4 : bits == 1 && wantMode >= 0 ? 6 : 4;
        GpuScenario.Case c = switch (kernel.function()) {
            case "fp16_decode", "append_token" ->
                    new GpuScenario.Case(3, 2, 4, d, 0, false, CalibrationPolicy.REFERENCE, new int[] {7, 300}, 2, 5, 9, 2);
            default -> switch (wantMode) {
                case 0 -> new GpuScenario.Case(3, 2, group, d, bits, false, CalibrationPolicy.REFERENCE, new int[] {1, 300}, 2, 5, 9, 2);
                // spans no longer than the planner's smallest chunk (2 blocks of 64), so each is one item: mode 2
                case 2 -> new GpuScenario.Case(2, 2, group, d, bits, true, CalibrationPolicy.REFERENCE, new int[] {7, 120}, 2, 5, 9, 1);
                default -> new GpuScenario.Case(1, 8, group, d, bits, true, CalibrationPolicy.REFERENCE, new int[] {3328}, 1, 41, 64, 2);
            };
        };
        GpuScenario.Result r = GpuScenario.run(catalog.context(), catalog, c, random, o -> {}, wantMode != 1 && wantMode != 2);
        if (r.passed() && wantMode >= 0 && r.calibrationMode() != wantMode) {
            return new Result(false, r.worstRatio(), 1, "scenario " + c + " ran calibration mode " + r.calibrationMode()
                    + ", not this variant's " + wantMode);
        }
        return new Result(r.passed(), r.worstRatio(), 1, (r.passed() ? "" : r.failure() + "; ") + "error as a fraction of "
                + "its tolerance, scenario " + c + ", scales within " + r.worstScaleUlps() + " ulp");
    }

    private static int constexpr(KernelManifest.Kernel k, String name, int fallback) {
        return k.constexprs().get(name) instanceof Number n ? n.intValue() : fallback;
    }
}
