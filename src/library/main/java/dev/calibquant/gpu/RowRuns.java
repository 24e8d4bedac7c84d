package dev.calibquant.gpu;

import java.util.ArrayList;
import java.util.List;

/**
 * The contiguous byte runs of a 2-D copy: one per row, or one for all rows when they lie end to end on both sides
 * (so a row copy costs one driver call where it can). Pure (tested without a GPU).
 */
final class RowRuns {

    /** {@code bytes} from {@code source} to {@code target}, offsets in the two buffers. */
    record Run(long source, long target, long bytes) {}

    private RowRuns() {}

    /** Row {@code r} reads {@code sourceBase + r·sourcePitch} and writes {@code targetBase + r·targetPitch}. */
    static List<Run> of(long sourceBase, long sourcePitch, long targetBase, long targetPitch, long rowBytes, int rows) {
        if (rows == 0 || rowBytes == 0) {
            return List.of();
        }
        if (rows == 1 || (sourcePitch == rowBytes && targetPitch == rowBytes)) {
            return List.of(new Run(sourceBase, targetBase, rowBytes * rows));
        }
        List<Run> runs = new ArrayList<>(rows);
        for (int r = 0; r < rows; r++) {
            runs.add(new Run(sourceBase + r * sourcePitch, targetBase + r * targetPitch, rowBytes));
        }
        return runs;
    }
}
