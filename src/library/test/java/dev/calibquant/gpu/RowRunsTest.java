package dev.calibquant.gpu;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.gpu.RowRuns.Run;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.constraints.IntRange;
import org.junit.jupiter.api.Test;

class RowRunsTest {

    @Test
    void rowsEndToEndOnBothSidesAreOneRun() {
        assertThat(RowRuns.of(100, 8, 4096, 8, 8, 4)).containsExactly(new Run(100, 4096, 32));
        assertThat(RowRuns.of(100, 0, 4096, 0, 24, 1)).containsExactly(new Run(100, 4096, 24));
    }

    @Test
    void otherwiseOneRunPerRowAtItsPitch() {
        // an appended token: one row per KV head, from a dense [kvHeads][headDim] to [kvHeads][capacity][headDim]
        assertThat(RowRuns.of(0, 256, 1000, 64 * 256, 256, 3)).containsExactly(
                new Run(0, 1000, 256), new Run(256, 1000 + 64 * 256, 256), new Run(512, 1000 + 2 * 64 * 256, 256));
        assertThat(RowRuns.of(64, 128, 0, 64, 64, 2)).containsExactly(new Run(64, 0, 64), new Run(192, 64, 64));
    }

    @Test
    void anEmptyCopyHasNoRuns() {
        assertThat(RowRuns.of(0, 8, 0, 8, 8, 0)).isEmpty();
        assertThat(RowRuns.of(0, 8, 0, 8, 0, 5)).isEmpty();
    }

    /** Replayed byte by byte, the runs write every row where the row copy says and nothing else. */
    @Property(tries = 200)
    void runsMoveExactlyTheRows(@ForAll @IntRange(min = 0, max = 40) int sourceBase,
            @ForAll @IntRange(min = 0, max = 40) int targetBase, @ForAll @IntRange(min = 1, max = 9) int rowBytes,
            @ForAll @IntRange(min = 0, max = 6) int sourceGap, @ForAll @IntRange(min = 0, max = 6) int targetGap,
            @ForAll @IntRange(min = 0, max = 7) int rows) {
        int sourcePitch = rowBytes + sourceGap;
        int targetPitch = rowBytes + targetGap;
        byte[] source = new byte[sourceBase + rows * sourcePitch + 1];
        for (int i = 0; i < source.length; i++) {
            source[i] = (byte) (i + 1);
        }
        byte[] expected = new byte[targetBase + rows * targetPitch + 1];
        for (int r = 0; r < rows; r++) {
            System.arraycopy(source, sourceBase + r * sourcePitch, expected, targetBase + r * targetPitch, rowBytes);
        }
        byte[] actual = new byte[expected.length];
        for (Run run : RowRuns.of(sourceBase, sourcePitch, targetBase, targetPitch, rowBytes, rows)) {
            System.arraycopy(source, (int) run.source(), actual, (int) run.target(), (int) run.bytes());
        }
        assertThat(actual).isEqualTo(expected);
    }
}
