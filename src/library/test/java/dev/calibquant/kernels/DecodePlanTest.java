package dev.calibquant.kernels;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.cache.TokenSpan;
import dev.calibquant.kernels.CalibQuantKernels;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.constraints.IntRange;
import net.jqwik.api.constraints.Size;
import org.junit.jupiter.api.Test;

class DecodePlanTest {
    private static final int SMS_X2 = 264;

    private static DecodePlan.Entry entry(int full, int... spanLengths) {
        List<TokenSpan> spans = new ArrayList<>();
        long[] codes = new long[spanLengths.length];
        long[] scales = new long[spanLengths.length];
        int at = 0;
        for (int i = 0; i < spanLengths.length; i++) {
            spans.add(new TokenSpan(at, at + spanLengths[i]));
            at += spanLengths[i];
            codes[i] = 1000L * (i + 1);
            scales[i] = 64L * (i + 1);
        }
        return new DecodePlan.Entry(4096, full, full + 8, spans, codes, scales);
    }

    @Test
    void oneSequenceIsSplitAcrossManyProgramsWithAMinMaxPass() {
        DecodePlan p = DecodePlan.build(List.of(entry(105, 3328)), 32, 128, 8, true, SMS_X2, 64, 0);
        assertThat(p.mmMode()).isEqualTo(1);
        assertThat(p.workItems() * 8).isGreaterThanOrEqualTo(SMS_X2 / 2);
        assertThat(p.minmaxChunks()).isEqualTo(p.workItems() - 2); // every visual item has its min/max chunk; 105 fp rows in 2
    }

    @Test
    void largeBatchesGetOneItemPerSegmentAndNoMinMaxPass() {
        List<DecodePlan.Entry> batch = new ArrayList<>();
        for (int b = 0; b < 256; b++) {
            batch.add(entry(105, 3328));
        }
        DecodePlan p = DecodePlan.build(batch, 32, 128, 8, true, SMS_X2, 64, 0);
        assertThat(p.mmMode()).isEqualTo(2);
        assertThat(p.workItems()).isEqualTo(256 * 3); // the 105 full-precision rows in items of 64 and 41
        assertThat(p.minmaxChunks()).isZero();
    }

    @Test
    void whereTheOneLaunchKernelShipsACalibratedSpanIsCutIntoEvenItemsThatMeet() {
        DecodePlan p = DecodePlan.build(List.of(entry(105, 3328)), 32, 128, 8, true, 16 * 132, 64, 832,
                new DecodePlan.OneLaunch(512, 1056));
        assertThat(p.mmMode()).isEqualTo(CalibQuantKernels.ONE_LAUNCH_MODE);
        assertThat(p.minmaxChunks()).isZero();
        long[] span = p.spanTab();
        assertThat(span[3]).isZero();
        assertThat(span[4]).isEqualTo(13); // 3328 tokens in items of 256: the least mode 3 cuts, though 128 would
                                           // fill 16 programs per SM
        assertThat(p.minmaxBufferBytes(8, 32)).isEqualTo(4L * 32 * (1 + 8));

        List<DecodePlan.Entry> batch = new ArrayList<>();
        for (int b = 0; b < 256; b++) {
            batch.add(entry(105, 3328));
        }
        DecodePlan big = DecodePlan.build(batch, 32, 128, 8, true, 16 * 132, 64, 832, new DecodePlan.OneLaunch(512, 1056));
        assertThat(big.mmMode()).isEqualTo(3);
        // 3328 tokens need 7 items of at most 512; evened out to whole blocks: 512 (ceil(476 / 64) * 64)
        for (int w = 0; w < big.workItems(); w++) {
            assertThat(big.workTab()[w * CalibQuantKernels.WORK_COLS + 3]).isLessThanOrEqualTo(512);
        }
        assertThat(big.spanTab()[4]).isEqualTo(7);
    }

    @Test
    void modeThreeCutsTheFullPrecisionRowsInOneBlockWhereTheStepIsLatencyBoundAndTwoWhereItFillsTheGpu() {
        // BENCHMARKS.md step on 132 SMs at 16 programs each: 105 full-precision rows (one item of up to 128, or two of
        // up to 64) next to a span of 3328
        for (int[] c : new int[][] {{1, 64}, {8, 64}, {32, 105}, {256, 105}}) {
            List<DecodePlan.Entry> batch = new ArrayList<>();
            for (int b = 0; b < c[0]; b++) {
                batch.add(entry(105, 3328));
            }
            DecodePlan p = DecodePlan.build(batch, 32, 128, 8, true, 16 * 132, 64, 832, new DecodePlan.OneLaunch(512, 1056));
            assertThat(p.mmMode()).isEqualTo(3);
            long longestFp = 0;
            for (int w = 0; w < p.workItems(); w++) {
                if (p.workTab()[w * CalibQuantKernels.WORK_COLS + 1] < 0) {
                    longestFp = Math.max(longestFp, p.workTab()[w * CalibQuantKernels.WORK_COLS + 3]);
                }
            }
            assertThat(longestFp).as("longest full-precision item at B = %d", c[0]).isEqualTo(c[1]);
        }
        // B = 8: 8 sequences x 14 items x 8 KV heads = 896 programs, at most half of 2112; B = 32: 8 items each, 2048
        List<DecodePlan.Entry> eight = new ArrayList<>();
        for (int b = 0; b < 8; b++) {
            eight.add(entry(105, 3328));
        }
        assertThat(DecodePlan.oneLaunchFpChunk(eight, 8, 16 * 132, 64, 128, 256)).isEqualTo(64);
        assertThat(DecodePlan.oneLaunchFpChunk(eight, 8, 1791, 64, 128, 256)).isEqualTo(128); // 896 > 1791 / 2
        assertThat(DecodePlan.oneLaunchFpChunk(eight, 8, 1792, 64, 128, 256)).isEqualTo(64);
    }

    @Test
    void aSpanNeedingMoreItemsThanMayWaitAtOnceFallsBackToTheMinMaxPass() {
        DecodePlan p = DecodePlan.build(List.of(entry(105, 3328)), 32, 128, 8, true, 16 * 132, 64, 832,
                new DecodePlan.OneLaunch(512, 6)); // 3328 tokens need 7 items of 512
        assertThat(p.mmMode()).isEqualTo(1);
        assertThat(p.minmaxChunks()).isPositive();
        DecodePlan off = DecodePlan.build(List.of(entry(105, 3328)), 32, 128, 8, false, 16 * 132, 64, 832,
                new DecodePlan.OneLaunch(512, 1056));
        assertThat(off.mmMode()).isZero(); // no calibration, no rendezvous
    }

    @Test
    void aBadOneLaunchLimitIsRefused() {
        assertThatThrownBy(() -> DecodePlan.build(List.of(entry(105, 3328)), 32, 128, 8, true, SMS_X2, 64, 0,
                new DecodePlan.OneLaunch(100, 10))).isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("one-launch chunk 100");
        assertThatThrownBy(() -> DecodePlan.build(List.of(entry(105, 3328)), 32, 128, 8, true, SMS_X2, 64, 0,
                new DecodePlan.OneLaunch(512, 0))).isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("allows no items");
    }

    /** Mode 3: every span's items are consecutive rows, at most the kernel's chunk each, counted in mm_count. */
    @Property(tries = 200)
    void oneLaunchItemsAreConsecutiveBoundedAndCounted(
            @ForAll @Size(min = 1, max = 12) List<@Size(max = 3) List<@IntRange(min = 1, max = 5000) Integer>> spans,
            @ForAll @IntRange(min = 0, max = 300) int full, @ForAll @IntRange(min = 1, max = 8) int chunkBlocks,
            @ForAll @IntRange(min = 1, max = 60) int maxItems, @ForAll @IntRange(min = 1, max = 3000) int programs) {
        List<DecodePlan.Entry> batch = new ArrayList<>();
        int longest = 0;
        for (List<Integer> s : spans) {
            batch.add(entry(s.isEmpty() ? Math.max(full, 1) : full, s.stream().mapToInt(Integer::intValue).toArray()));
            longest = Math.max(longest, s.stream().mapToInt(Integer::intValue).max().orElse(0));
        }
        int chunk = 64 * chunkBlocks;
        DecodePlan p = DecodePlan.build(batch, 8, 64, 2, true, programs, 64, 832, new DecodePlan.OneLaunch(chunk, maxItems));
        if (longest > 0 && Math.ceilDiv(longest, chunk) > maxItems) {
            assertThat(p.mmMode()).isNotEqualTo(3); // cannot fit even at the largest chunk
        }
        if (p.mmMode() != 3) {
            return;
        }
        long[] work = p.workTab();
        for (int sp = 0; sp < p.spans(); sp++) {
            int first = -1;
            int count = 0;
            long covered = 0;
            for (int w = 0; w < p.workItems(); w++) {
                int w0 = w * CalibQuantKernels.WORK_COLS;
                if (work[w0 + 1] == sp) {
                    if (first < 0) {
                        first = w;
                    }
                    assertThat(w).as("items of span %d are consecutive", sp).isEqualTo(first + count);
                    assertThat(work[w0 + 3]).isBetween(1L, (long) chunk);
                    assertThat(work[w0 + 2]).isEqualTo(covered);
                    covered += work[w0 + 3];
                    count++;
                }
            }
            int r = sp * CalibQuantKernels.SPAN_COLS;
            assertThat(covered).isEqualTo(p.spanTab()[r + 1]);
            assertThat(p.spanTab()[r + 4]).isEqualTo(count);
            assertThat(count).isLessThanOrEqualTo(maxItems);
        }
    }

    /** The four tables one after another, each from a multiple of 256 bytes, every value where the kernels read it. */
    @Test
    void tablesAreWrittenAtAlignedOffsetsOfOneBuffer() {
        DecodePlan p = DecodePlan.build(List.of(entry(105, 3328), entry(7, 1, 40)), 32, 128, 8, true, SMS_X2, 64, 0);
        DecodePlan.TableLayout at = p.tableLayout();
        assertThat(at.seqOffset()).isZero();
        assertThat(at.spanOffset()).isEqualTo(Math.ceilDiv(8L * p.seqTab().length, 256) * 256);
        assertThat(at.workOffset()).isEqualTo(at.spanOffset() + Math.ceilDiv(8L * p.spanTab().length, 256) * 256);
        assertThat(at.mmOffset()).isEqualTo(at.workOffset() + Math.ceilDiv(8L * p.workTab().length, 256) * 256);
        assertThat(at.bytes()).isEqualTo(at.mmOffset() + Math.ceilDiv(8L * p.mmTab().length, 256) * 256);
        assertThat(p.mmTab()).isNotEmpty(); // mode 1: all four tables are written
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment m = arena.allocate(at.bytes());
            p.writeTables(m, at);
            assertThat(m.asSlice(at.seqOffset(), 8L * p.seqTab().length).toArray(ValueLayout.JAVA_LONG))
                    .containsExactly(p.seqTab());
            assertThat(m.asSlice(at.spanOffset(), 8L * p.spanTab().length).toArray(ValueLayout.JAVA_LONG))
                    .containsExactly(p.spanTab());
            assertThat(m.asSlice(at.workOffset(), 8L * p.workTab().length).toArray(ValueLayout.JAVA_LONG))
                    .containsExactly(p.workTab());
            assertThat(m.asSlice(at.mmOffset(), 8L * p.mmTab().length).toArray(ValueLayout.JAVA_LONG))
                    .containsExactly(p.mmTab());
            assertThatThrownBy(() -> p.writeTables(arena.allocate(at.bytes() - 8), at))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("table segment");
        }
    }

    @Test
    void withoutCalibrationThereIsNoMinMaxPass() {
        DecodePlan p = DecodePlan.build(List.of(entry(105, 3328)), 32, 128, 8, false, SMS_X2, 64, 0);
        assertThat(p.mmMode()).isZero();
        assertThat(p.minmaxChunks()).isZero();
    }

    @Test
    void oneWarpProgramsCapTheVisualChunkSoLargeBatchesKeepTheMinMaxPass() {
        List<DecodePlan.Entry> batch = new ArrayList<>();
        for (int b = 0; b < 256; b++) {
            batch.add(entry(105, 3328));
        }
        DecodePlan p = DecodePlan.build(batch, 32, 128, 8, true, 16 * 132, 64, 832);
        assertThat(p.mmMode()).isEqualTo(1);
        assertThat(p.workItems()).isEqualTo(256 * (2 + 4)); // 3328 = 4 x 832
        for (int w = 0; w < p.workItems(); w++) {
            long tn = p.workTab()[w * CalibQuantKernels.WORK_COLS + 3];
            boolean full = p.workTab()[w * CalibQuantKernels.WORK_COLS + 1] < 0;
            assertThat(tn).isLessThanOrEqualTo(full ? 64 : 832);
        }
    }

    @Test
    void aSequenceWhollyInFullPrecisionIsCutLikeAnyOtherSegment() {
        List<DecodePlan.Entry> batch = new ArrayList<>();
        for (int b = 0; b < 64; b++) {
            batch.add(entry(3433));
        }
        DecodePlan p = DecodePlan.build(batch, 32, 128, 8, false, SMS_X2, 64, 0);
        assertThat(p.workItems()).isEqualTo(64); // one item each, not 3433 / 64 of them
    }

    @Test
    void aMaxChunkThatIsNotAMultipleOfTheBlockIsRejected() {
        assertThatThrownBy(() -> DecodePlan.build(List.of(entry(105, 3328)), 32, 128, 8, true, SMS_X2, 64, 100))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("maxChunk 100");
        assertThatThrownBy(() -> DecodePlan.build(List.of(entry(105, 3328)), 32, 128, 8, true, SMS_X2, 64, -64))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("maxChunk -64");
    }

    @Test
    void aSequenceWithoutTokensIsRejected() {
        assertThatThrownBy(() -> DecodePlan.build(List.of(entry(0)), 32, 128, 8, true, SMS_X2, 64, 0))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("no tokens");
    }

    /** The tables cover every token of every segment exactly once, and point where the entries say. */
    @Property(tries = 200)
    void tablesCoverEveryTokenOnce(@ForAll @Size(min = 1, max = 12) List<@Size(max = 3) List<@IntRange(min = 1, max = 5000) Integer>> spans,
            @ForAll @IntRange(min = 0, max = 300) int full, @ForAll boolean calibrate,
            @ForAll @IntRange(min = 0, max = 13) int maxBlocks) {
        List<DecodePlan.Entry> batch = new ArrayList<>();
        for (List<Integer> s : spans) {
            batch.add(entry(s.isEmpty() ? Math.max(full, 1) : full, s.stream().mapToInt(Integer::intValue).toArray()));
        }
        DecodePlan p = DecodePlan.build(batch, 8, 64, 2, calibrate, SMS_X2, 64, 64 * maxBlocks);
        long[] seq = p.seqTab();
        long[] work = p.workTab();
        long[] span = p.spanTab();
        int spanId = 0;
        for (int b = 0; b < batch.size(); b++) {
            DecodePlan.Entry e = batch.get(b);
            int s0 = b * CalibQuantKernels.SEQ_COLS;
            assertThat(seq[s0]).isEqualTo(e.fullOffset());
            assertThat(seq[s0 + 1]).isEqualTo(e.fullLength());
            assertThat(seq[s0 + 3]).isEqualTo((long) b * 8 * 64);
            long first = seq[s0 + 4];
            long count = seq[s0 + 5];
            assertThat(count).isPositive();
            long fullCovered = 0;
            long[] spanCovered = new long[e.spans().size()];
            for (long w = first; w < first + count; w++) {
                int w0 = (int) w * CalibQuantKernels.WORK_COLS;
                assertThat(work[w0]).isEqualTo(b);
                if (work[w0 + 1] < 0) {
                    assertThat(work[w0 + 2]).isEqualTo(fullCovered);
                    fullCovered += work[w0 + 3];
                } else {
                    int local = (int) work[w0 + 1] - spanId;
                    assertThat(work[w0 + 2]).isEqualTo(spanCovered[local]);
                    spanCovered[local] += work[w0 + 3];
                }
            }
            assertThat(fullCovered).isEqualTo(e.fullLength());
            for (int i = 0; i < e.spans().size(); i++) {
                int r = (spanId + i) * CalibQuantKernels.SPAN_COLS;
                assertThat(spanCovered[i]).isEqualTo(e.spans().get(i).length());
                assertThat(span[r]).isEqualTo(e.codeOffsets()[i]);
                assertThat(span[r + 1]).isEqualTo(e.spans().get(i).length());
                assertThat(span[r + 2]).isEqualTo(e.scaleOffsets()[i]);
                if (p.mmMode() == 1) {
                    long covered = 0;
                    for (long c = span[r + 3]; c < span[r + 3] + span[r + 4]; c++) {
                        int m0 = (int) c * CalibQuantKernels.MM_COLS;
                        assertThat(p.mmTab()[m0]).isEqualTo(b);
                        assertThat(p.mmTab()[m0 + 1]).isEqualTo(spanId + i);
                        assertThat(p.mmTab()[m0 + 2]).isEqualTo(covered);
                        covered += p.mmTab()[m0 + 3];
                    }
                    assertThat(covered).isEqualTo(e.spans().get(i).length());
                }
            }
            spanId += e.spans().size();
        }
        assertThat(p.mmMode()).isEqualTo(calibrate ? p.mmMode() : 0);
    }
}
