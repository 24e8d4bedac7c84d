package dev.calibquant.gpu;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.util.ArrayList;
import java.util.List;
import java.util.OptionalLong;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.constraints.IntRange;
import net.jqwik.api.constraints.Size;
import org.junit.jupiter.api.Test;

class RangeAllocatorProperties {

    /** Random allocate/free sequences: live ranges never overlap, stay aligned and in bounds; all freed = one range. */
    @Property(tries = 300)
    void rangesNeverOverlapAndCoalesceBack(@ForAll @Size(max = 60) List<@IntRange(min = -40, max = 500) Integer> ops) {
        RangeAllocator a = new RangeAllocator(64 * 64, 64);
        List<long[]> live = new ArrayList<>();
        for (int op : ops) {
            if (op <= 0 && !live.isEmpty()) {
                long[] r = live.remove(Math.floorMod(op, live.size()));
                a.release(r[0], r[1]);
            } else if (op > 0) {
                OptionalLong off = a.allocate(op);
                if (off.isPresent()) {
                    long start = off.getAsLong();
                    long len = a.roundUp(op);
                    assertThat(start % 64).isZero();
                    assertThat(start + len).isLessThanOrEqualTo(a.capacity());
                    for (long[] other : live) {
                        long oLen = a.roundUp(other[1]);
                        assertThat(start + len <= other[0] || other[0] + oLen <= start).as("overlap").isTrue();
                    }
                    live.add(new long[] {start, op});
                } else {
                    assertThat(largestGap(a, live)).as("a gap that fits was missed").isLessThan(a.roundUp(op));
                }
            }
            assertThat(a.used()).isEqualTo(live.stream().mapToLong(r -> a.roundUp(r[1])).sum());
        }
        for (long[] r : live) {
            a.release(r[0], r[1]);
        }
        assertThat(a.used()).isZero();
        assertThat(a.freeRanges()).isEqualTo(1);
        assertThat(a.allocate(a.capacity())).hasValue(0);
    }

    private static long largestGap(RangeAllocator a, List<long[]> live) {
        List<long[]> sorted = new ArrayList<>(live);
        sorted.sort((x, y) -> Long.compare(x[0], y[0]));
        long at = 0;
        long best = 0;
        for (long[] r : sorted) {
            best = Math.max(best, r[0] - at);
            at = r[0] + a.roundUp(r[1]);
        }
        return Math.max(best, a.capacity() - at);
    }

    @Test
    void doubleFreeAndForeignRangesAreRejected() {
        RangeAllocator a = new RangeAllocator(1024, 64);
        long off = a.allocate(100).orElseThrow();
        a.release(off, 100);
        assertThatThrownBy(() -> a.release(off, 100)).isInstanceOf(IllegalStateException.class)
                .hasMessageContaining("double free");
        assertThatThrownBy(() -> a.release(32, 64)).isInstanceOf(IllegalArgumentException.class);
        assertThatThrownBy(() -> a.release(1024, 64)).isInstanceOf(IllegalArgumentException.class);
        assertThat(a.allocate(2000)).isEmpty();
    }
}
