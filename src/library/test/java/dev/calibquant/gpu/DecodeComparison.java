package dev.calibquant.gpu;

import dev.calibquant.cache.LayerKvView;
import dev.calibquant.cache.ModelGeometry;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.List;

/** A GPU decode output against the CPU reference's, element by element, within {@link DecodeErrorBound}'s bound. */
final class DecodeComparison {
    private DecodeComparison() {}

    /** The largest {@code |GPU - CPU| / bound} (at most 1 when all agree) and the first element past its bound. */
    record Result(double worstRatio, String firstOutOfBound) {}

    static Result compare(float[] qf, List<LayerKvView> views, MemorySegment gpu, MemorySegment cpu, ModelGeometry g,
            int workItems, int block) {
        int d = g.headDim();
        double worst = 0;
        for (int b = 0; b < views.size(); b++) {
            for (int h = 0; h < g.queryHeads(); h++) {
                int row = (b * g.queryHeads() + h) * d;
                double tol = DecodeErrorBound.attentionTolerance(Arrays.copyOfRange(qf, row, row + d), views.get(b),
                        workItems, block);
                for (int j = 0; j < d; j++) {
                    float gv = gpu.getAtIndex(ValueLayout.JAVA_FLOAT, row + j);
                    float cv = cpu.getAtIndex(ValueLayout.JAVA_FLOAT, row + j);
                    double ratio = Math.abs(gv - cv) / tol;
                    if (!Float.isFinite(gv) || !(ratio <= 1)) {
                        return new Result(Double.POSITIVE_INFINITY, "out[" + b + "][" + h + "][" + j + "] GPU " + gv
                                + " CPU " + cv + " tolerance " + tol);
                    }
                    worst = Math.max(worst, ratio);
                }
            }
        }
        return new Result(worst, null);
    }

    /** The first output element off by more than its row's tolerance (or not finite), or null (the worst printed). */
    static String firstOutOfBound(float[] qf, List<LayerKvView> views, MemorySegment gpu, MemorySegment cpu,
            ModelGeometry g, int workItems, int block) {
        Result r = compare(qf, views, gpu, cpu, g, workItems, block);
        if (r.firstOutOfBound() == null) {
            System.out.printf("[calibquant] worst error %.3f of tolerance%n", r.worstRatio());
        }
        return r.firstOutOfBound();
    }
}
