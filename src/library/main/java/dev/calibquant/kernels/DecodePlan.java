package dev.calibquant.kernels;

import dev.calibquant.cache.TokenSpan;
import dev.calibquant.kernels.CalibQuantKernels;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;

/**
 * How one decode step over a batch is cut into work for the kernels: the host side of the index tables, and the
 * calibration mode. Pure Java (tested without a GPU); the GPU decode attention uploads and launches it.
 *
 * <p>Work items are chunks of a sequence's full-precision block or of one visual span; each runs as one program
 * per KV head, and the last to finish for a (sequence, KV head) merges the partial softmaxes. Chunks are sized so a
 * step has about {@code targetPrograms} programs: small batches are split across many programs, large batches get
 * one item per segment. With calibration, a span cut into several items needs its min/max first (mode 1: the
 * {@code calibquant_minmax} pass over the same chunks); a span in one item finds them itself (mode 2). Where the
 * kernels ship it, mode 3 does it in one launch: every span is cut into items of at most the kernel's chunk, which
 * meet at a rendezvous (their count in the span's {@code mm_count}, their rows consecutive).
 */
public record DecodePlan(int sequences, int mmMode, long[] seqTab, long[] spanTab, long[] workTab, long[] mmTab) {

    public int workItems() {
        return workTab.length / CalibQuantKernels.WORK_COLS;
    }

    public int minmaxChunks() {
        return mmTab.length / CalibQuantKernels.MM_COLS;
    }

    public int spans() {
        return spanTab.length / CalibQuantKernels.SPAN_COLS;
    }

    /** Tables start at multiples of this many bytes of the one buffer that holds them all. */
    public static final int TABLE_ALIGN = 256;

    /** Byte offsets of the four tables in the one buffer the kernels read them from, and its size. */
    public record TableLayout(long seqOffset, long spanOffset, long workOffset, long mmOffset, long bytes) {}

    public TableLayout tableLayout() {
        long spanOffset = alignTable(8L * seqTab.length);
        long workOffset = alignTable(spanOffset + 8L * spanTab.length);
        long mmOffset = alignTable(workOffset + 8L * workTab.length);
        return new TableLayout(0, spanOffset, workOffset, mmOffset, alignTable(mmOffset + 8L * mmTab.length));
    }

    /** Writes the four tables (int64) where {@code layout} puts them in {@code dst}. */
    public void writeTables(MemorySegment dst, TableLayout layout) {
        if (dst.byteSize() < layout.bytes()) {
            throw new IllegalArgumentException("table segment of " + dst.byteSize() + " bytes; the plan needs "
                    + layout.bytes());
        }
        MemorySegment.copy(seqTab, 0, dst, ValueLayout.JAVA_LONG, layout.seqOffset(), seqTab.length);
        MemorySegment.copy(spanTab, 0, dst, ValueLayout.JAVA_LONG, layout.spanOffset(), spanTab.length);
        MemorySegment.copy(workTab, 0, dst, ValueLayout.JAVA_LONG, layout.workOffset(), workTab.length);
        MemorySegment.copy(mmTab, 0, dst, ValueLayout.JAVA_LONG, layout.mmOffset(), mmTab.length);
    }

    private static long alignTable(long bytes) {
        return Math.ceilDiv(bytes, TABLE_ALIGN) * TABLE_ALIGN;
    }

    /** What the planner needs of one sequence for one layer. */
    public record Entry(long fullOffset, int fullLength, int fullCapacity, List<TokenSpan> spans, long[] codeOffsets,
            long[] scaleOffsets) {}

    /** Bytes of the {@code mm_buf} a launch of this plan needs (mode 3: the rendezvous slots; else min/max pairs). */
    public long minmaxBufferBytes(int kvHeads, int queryHeads) {
        return mmMode == CalibQuantKernels.ONE_LAUNCH_MODE ? CalibQuantKernels.rendezvousBytes(spans(), kvHeads)
                : 4L * 2 * Math.max(1, minmaxChunks()) * queryHeads;
    }

    /**
     * Smallest visual item of mode 3, in blocks: 4 blocks (256 tokens) beat 2 on the H200 at B = 1 (15.7 against
     * 18.7 µs) and B = 8 (19.1 against 25.2 µs; e679b9e:docs/gpu-runs/2026-11-29-s4/).
     */
    public static final int ONE_LAUNCH_MIN_BLOCKS = 4;

    /** Mode 3 only where the kernels ship it: its largest item and the most items one span may have. */
    public record OneLaunch(int chunk, int maxItems) {
        public static final OneLaunch NONE = new OneLaunch(0, 0);

        /** What these kernels ship for this group (the resident-program bound is read from the GPU once). */
        public static OneLaunch of(CalibQuantKernels kernels, int group) {
            int chunk = kernels.oneLaunchChunk(group);
            return chunk == 0 ? NONE : new OneLaunch(chunk, kernels.oneLaunchMaxItems(group));
        }
    }

    public static DecodePlan build(List<Entry> batch, int queryHeads, int headDim, int kvHeads, boolean calibrate,
            int targetPrograms, int block, int maxChunk) {
        return build(batch, queryHeads, headDim, kvHeads, calibrate, targetPrograms, block, maxChunk, OneLaunch.NONE);
    }

    /**
     * @param calibrate whether the visual scores are calibrated (modes 1/2/3) or not (mode 0)
     * @param block the kernels' token block: chunk sizes are multiples of it
     * @param maxChunk the largest visual chunk of one item (a multiple of block), or 0 for no limit
     * @param oneLaunch mode 3's limits, or {@link OneLaunch#NONE}: then modes 1 and 2 only
     */
    public static DecodePlan build(List<Entry> batch, int queryHeads, int headDim, int kvHeads, boolean calibrate,
            int targetPrograms, int block, int maxChunk, OneLaunch oneLaunch) {
        if (maxChunk < 0 || maxChunk % block != 0) {
            throw new IllegalArgumentException("maxChunk " + maxChunk + " is not 0 or a positive multiple of " + block);
        }
        if (oneLaunch.chunk() < 0 || oneLaunch.chunk() % block != 0 || (oneLaunch.chunk() > 0 && oneLaunch.maxItems() < 1)) {
            throw new IllegalArgumentException("one-launch chunk " + oneLaunch.chunk() + " is not 0 or a positive "
                    + "multiple of " + block + ", or allows no items (" + oneLaunch.maxItems() + ")");
        }
        long totalRows = 0;
        int longestSpan = 0;
        for (Entry e : batch) {
            totalRows += e.fullLength();
            for (TokenSpan s : e.spans()) {
                totalRows += s.length();
                longestSpan = Math.max(longestSpan, s.length());
            }
            if (e.fullLength() == 0 && e.spans().isEmpty()) {
                throw new IllegalArgumentException("a sequence in the batch holds no tokens in this layer");
            }
        }
        long wantItems = Math.max(1, Math.ceilDiv((long) targetPrograms, kvHeads));
        long chunk = Math.max(2L * block, Math.ceilDiv(Math.ceilDiv(totalRows, wantItems), block) * block);
        if (maxChunk > 0) {
            chunk = Math.min(chunk, Math.max(2L * block, maxChunk));
        }
        // next to visual spans the full-precision block is short (prefix + text): cut it finer so it is not the
        // longest item at small B; a sequence kept wholly in full precision is cut like any other segment
        long shortFpChunk = Math.min(chunk, block);
        int mmMode = !calibrate ? 0 : (chunk >= longestSpan ? 2 : 1);
        long visualChunk = chunk;
        if (calibrate && oneLaunch.chunk() > 0) {
            // at small B a span's items wait for each other and the last merges them all: fewer, longer items win
            long c = Math.min(Math.max(chunk, ONE_LAUNCH_MIN_BLOCKS * (long) block), oneLaunch.chunk());
            if (Math.ceilDiv(longestSpan, c) <= oneLaunch.maxItems()) {
                mmMode = CalibQuantKernels.ONE_LAUNCH_MODE;
                visualChunk = c;
            }
        }
        if (mmMode == CalibQuantKernels.ONE_LAUNCH_MODE) {
            shortFpChunk = oneLaunchFpChunk(batch, kvHeads, targetPrograms, block, chunk, visualChunk);
        }

        List<long[]> seq = new ArrayList<>();
        List<long[]> span = new ArrayList<>();
        List<long[]> work = new ArrayList<>();
        List<long[]> mm = new ArrayList<>();
        for (int b = 0; b < batch.size(); b++) {
            Entry e = batch.get(b);
            int workFirst = work.size();
            long fpChunk = e.spans().isEmpty() ? chunk : shortFpChunk;
            for (long t0 = 0; t0 < e.fullLength(); t0 += fpChunk) {
                work.add(new long[] {b, -1, t0, Math.min(fpChunk, e.fullLength() - t0)});
            }
            for (int i = 0; i < e.spans().size(); i++) {
                int tokens = e.spans().get(i).length();
                int spanId = span.size();
                int mmFirst = mm.size();
                long itemChunk = mmMode == 2 ? tokens : chunk;
                if (mmMode == CalibQuantKernels.ONE_LAUNCH_MODE) {
                    // as many items as the chunk needs, evened out (whole blocks) so none is much the longest
                    long items = Math.ceilDiv(tokens, visualChunk);
                    itemChunk = Math.min(visualChunk, Math.ceilDiv(Math.ceilDiv(tokens, items), block) * block);
                }
                int itemsFirst = work.size();
                for (long t0 = 0; t0 < tokens; t0 += itemChunk) {
                    long tn = Math.min(itemChunk, tokens - t0);
                    work.add(new long[] {b, spanId, t0, tn});
                    if (mmMode == 1) {
                        mm.add(new long[] {b, spanId, t0, tn});
                    }
                }
                span.add(mmMode == CalibQuantKernels.ONE_LAUNCH_MODE
                        ? new long[] {e.codeOffsets()[i], tokens, e.scaleOffsets()[i], 0, work.size() - itemsFirst}
                        : new long[] {e.codeOffsets()[i], tokens, e.scaleOffsets()[i], mmFirst, mm.size() - mmFirst});
            }
            seq.add(new long[] {e.fullOffset(), e.fullLength(), e.fullCapacity(), (long) b * queryHeads * headDim,
                workFirst, work.size() - workFirst});
        }
        return new DecodePlan(batch.size(), mmMode, flatten(seq), flatten(span), flatten(work), flatten(mm));
    }

    /**
     * Full-precision item size of mode 3 next to visual spans. Its full-precision rows run in tiles of 16, the
     * slowest per token: where the programs fill the GPU, items of two blocks cost less than two items of one (H200:
     * B = 256 203 against 222 us, B = 32 38.5 against 42.4); where they all fit at once with room to spare the step is
     * latency-bound and a two-block item is its longest chain, so items of one block (B = 1 15.5 against 20.1 us,
     * B = 8 19.1 against 22.9, DRAM-cold; docs/benchmarks.md, sixth session).
     */
    public static long oneLaunchFpChunk(List<Entry> batch, int kvHeads, int targetPrograms, int block, long chunk,
            long visualChunk) {
        long twoBlocks = Math.min(chunk, 2L * block);
        long items = 0;
        for (Entry e : batch) {
            items += Math.ceilDiv(e.fullLength(), e.spans().isEmpty() ? chunk : twoBlocks);
            for (TokenSpan s : e.spans()) {
                items += Math.ceilDiv(s.length(), visualChunk);
            }
        }
        return items * kvHeads <= targetPrograms / 2 ? Math.min(chunk, block) : twoBlocks;
    }

    private static long[] flatten(List<long[]> rows) {
        int cols = rows.isEmpty() ? 0 : rows.getFirst().length;
        long[] out = new long[rows.size() * cols];
        for (int i = 0; i < rows.size(); i++) {
            System.arraycopy(rows.get(i), 0, out, i * cols, cols);
        }
        return out;
    }
}
