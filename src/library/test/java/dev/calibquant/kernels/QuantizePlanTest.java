package dev.calibquant.kernels;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * The quantize launch plan, replayed the way {@code quantize_pack} reads it: ticket -> chunk row -> span -> group
 * and token range. Every (span, KV head, K/V, token) must be covered exactly once, a group's members must hold
 * consecutive tickets (the barrier's deadlock argument), and no group may have more members than a quarter of what
 * the GPU holds.
 */
class QuantizePlanTest {

    /** What program {@code ticket} works on, computed exactly as the kernel does. */
    record Program(int span, int kvh, int kind, int group, int tBegin, int tEnd, int members) {}

    static Program replay(QuantizePlan plan, int ticket, int tile) {
        long[] qs = plan.spanTable();
        int[] qc = plan.chunkTable();
        int kvHeads = plan.kvHeads();
        int span = qc[ticket / (2 * kvHeads)];
        int row = span * CalibQuantKernels.QS_COLS;
        int tokens = (int) qs[row + 3];
        long chunkFirst = qs[row + 6];
        int members = (int) qs[row + 7];
        int local = (int) (ticket - 2 * kvHeads * chunkFirst);
        int hk = local / members;
        int tBegin = (local % members) * plan.tilesPerProgram() * tile;
        int tEnd = Math.min(tBegin + plan.tilesPerProgram() * tile, tokens);
        return new Program(span, hk / 2, hk % 2, span * 2 * kvHeads + hk, tBegin, tEnd, members);
    }

    @Test
    void everyTokenOfEveryGroupIsQuantizedOnceAndGroupsHoldConsecutiveTickets() {
        long seed = System.nanoTime();
        Random random = new Random(seed);
        for (int round = 0; round < 50; round++) {
            int kvHeads = 1 + random.nextInt(8);
            int tile = 1 << (3 + random.nextInt(5));
            int resident = 4 + random.nextInt(400);
            List<QuantizePlan.Span> spans = new ArrayList<>();
            int n = 1 + random.nextInt(6);
            for (int i = 0; i < n; i++) {
                int tokens = 1 + random.nextInt(random.nextBoolean() ? 300 : 12_000);
                int start = random.nextInt(50);
                spans.add(new QuantizePlan.Span(16L * random.nextInt(1000), start + tokens + random.nextInt(5), start,
                        tokens, 16L * random.nextInt(1000), 16L * random.nextInt(100)));
            }
            QuantizePlan plan = QuantizePlan.of(spans, kvHeads, 128, 1, tile, resident);
            String where = "seed " + seed + " round " + round;
            assertThat(plan.groups()).as(where).isEqualTo(n * 2 * kvHeads);
            int[][] covered = new int[plan.groups()][];
            for (int g = 0; g < plan.groups(); g++) {
                covered[g] = new int[spans.get(g / (2 * kvHeads)).tokens()];
            }
            int lastGroup = -1;
            boolean[] closed = new boolean[plan.groups()];
            for (int ticket = 0; ticket < plan.programs(); ticket++) {
                Program p = replay(plan, ticket, tile);
                assertThat(p.members()).as(where).isLessThanOrEqualTo(resident / 4);
                assertThat(p.tBegin()).as(where).isLessThan(p.tEnd());
                if (p.group() != lastGroup) {
                    assertThat(closed[p.group()]).as(where + ": group " + p.group() + " resumed after another").isFalse();
                    if (lastGroup >= 0) {
                        closed[lastGroup] = true;
                    }
                    lastGroup = p.group();
                }
                for (int t = p.tBegin(); t < p.tEnd(); t++) {
                    covered[p.group()][t]++;
                }
            }
            for (int[] group : covered) {
                for (int c : group) {
                    assertThat(c).as(where).isEqualTo(1);
                }
            }
        }
    }

    @Test
    void longSpansGetSeveralTilesPerProgramSoAGroupFitsOnTheGpu() {
        QuantizePlan usual = QuantizePlan.of(List.of(new QuantizePlan.Span(0, 3433, 41, 3328, 0, 0)), 8, 128, 1, 128,
                1056);
        assertThat(usual.tilesPerProgram()).isEqualTo(1);
        assertThat(usual.programs()).isEqualTo(26 * 16);
        QuantizePlan huge = QuantizePlan.of(List.of(new QuantizePlan.Span(0, 200_000, 0, 200_000, 0, 0)), 8, 128, 1,
                128, 264);
        assertThat(huge.tilesPerProgram()).isEqualTo(24); // 1563 tiles over at most 66 members
        assertThat(huge.spanTable()[7]).isLessThanOrEqualTo(66);
        QuantizePlan smallTiles = QuantizePlan.of(List.of(new QuantizePlan.Span(0, 3433, 41, 3328, 0, 0)), 8, 128, 1,
                64, 1056);
        assertThat(smallTiles.tilesPerProgram()).isEqualTo(2); // at least MIN_CHUNK_TOKENS per program
        assertThat(smallTiles.programs()).isEqualTo(26 * 16);
    }

    /**
     * A span of 2^31 − 1 tokens: its tile count (16,777,216 of 128) must not overflow int arithmetic, or the plan
     * would cut it into one chunk per tile, far more members than the 66 the barrier allows.
     */
    @Test
    void theLongestSpanStillFitsTheBarrier() {
        QuantizePlan plan = QuantizePlan.of(List.of(new QuantizePlan.Span(0, Integer.MAX_VALUE, 0, Integer.MAX_VALUE,
                0, 0)), 1, 16, 1, 128, 264);
        assertThat(plan.tilesPerProgram()).isEqualTo(254_201); // ⌈16,777,216 / 66⌉
        assertThat(plan.spanTable()[7]).isEqualTo(66).isLessThanOrEqualTo(264 / 4);
        assertThat(plan.programs()).isEqualTo(66 * 2);
    }

    @Test
    void tablesAreWrittenLittleEndianWhereTheKernelReadsThem() {
        QuantizePlan plan = QuantizePlan.of(List.of(new QuantizePlan.Span(32, 100, 3, 90, 48, 16),
                new QuantizePlan.Span(6400, 10, 0, 10, 1600, 32)), 2, 64, 2, 32, 100);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment m = arena.allocate(plan.tableBytes());
            plan.writeTables(m);
            var i64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
            var i32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
            assertThat(m.get(i64, 0)).isEqualTo(32);
            assertThat(m.get(i64, 8 * 7)).isEqualTo(1); // chunks of span 0: 90 tokens, one chunk of 128
            assertThat(m.get(i64, 8 * (8 + 6))).isEqualTo(1); // span 1 starts at chunk row 1
            assertThat(m.get(i32, plan.chunkTableOffset() + 4)).isEqualTo(1);
            assertThat(plan.tableBytes()).isEqualTo(8 * 16 + 4 * 2);
            assertThat(plan.statsOffset()).isEqualTo(4L * (4 + 4 * 8)); // the counters first
            assertThat(plan.scratchBytes()).isEqualTo(plan.statsOffset() + 4L * 8 * 2 * 64);
            assertThatThrownBy(() -> plan.writeTables(arena.allocate(plan.tableBytes() - 1)))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("table segment");
        }
    }

    @Test
    void badSpansAndGeometriesAreRefusedWithTheirNumbers() {
        assertThatThrownBy(() -> new QuantizePlan.Span(0, 10, 0, 0, 0, 0))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("at least one token");
        assertThatThrownBy(() -> new QuantizePlan.Span(0, 10, 5, 6, 0, 0))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("5..11");
        assertThatThrownBy(() -> new QuantizePlan.Span(8, 10, 0, 5, 0, 0))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("multiples of 16");
        QuantizePlan.Span ok = new QuantizePlan.Span(0, 10, 0, 10, 0, 0);
        assertThatThrownBy(() -> QuantizePlan.of(List.of(), 8, 128, 1, 128, 100))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("no spans");
        assertThatThrownBy(() -> QuantizePlan.of(List.of(ok), 8, 128, 3, 128, 100))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("bits");
        assertThatThrownBy(() -> QuantizePlan.of(List.of(ok), 8, 128, 1, 128, 3))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("at least 4");
        QuantizePlan plan = QuantizePlan.of(List.of(ok), 8, 128, 1, 128, 100);
        plan.requireGeometry(128, 1);
        assertThatThrownBy(() -> plan.requireGeometry(64, 1))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("head dim 128, 1 bits");
        assertThatThrownBy(() -> plan.requireGeometry(128, 2))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("head dim 128, 2 bits");
        plan.requireWithin(8L * 10 * 128, 8L * 10 * 16, 8L * 128);
        assertThatThrownBy(() -> plan.requireWithin(8L * 10 * 128 - 1, 8L * 10 * 16, 8L * 128))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("source elements");
        assertThatThrownBy(() -> plan.requireWithin(8L * 10 * 128, 8L * 10 * 16 - 1, 8L * 128))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("code bytes");
        assertThatThrownBy(() -> plan.requireWithin(8L * 10 * 128, 8L * 10 * 16, 8L * 128 - 1))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("scale floats");
    }
}
