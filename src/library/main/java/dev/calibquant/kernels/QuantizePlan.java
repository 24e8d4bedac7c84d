package dev.calibquant.kernels;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.List;

/**
 * How one {@code quantize_pack} launch covers its spans (see {@code ptx/kernels/quantize.py}): the tokens of each
 * (span, KV head, K or V) group are cut into chunks of {@code tilesPerProgram * tileTokens} tokens, one program
 * each; the members of a group wait for each other at a barrier, so a group must never have more members than the
 * GPU holds at once. Pure arithmetic and checks, so it is tested without a GPU.
 *
 * <p>Tables: {@code qs_tab} rows of {@link CalibQuantKernels#QS_COLS} int64 (src_off, src_cap, src_t0, tokens,
 * code_off, scale_off, chunk_first, chunk_count) and {@code qc_tab}, the span of each chunk row (int32). The launch
 * is a 1-D grid of {@code 2 * kvHeads} programs per chunk row. Scratch, one buffer of {@link #scratchBytes()} that
 * must be zero when the launch starts: {@code 4 + 4 * groups} int32 counters, then from {@link #statsOffset()} per
 * group {@code 2 * headDim} int32 statistics.
 */
public final class QuantizePlan {

    /**
     * One span to quantize, offsets in elements of the buffer each indexes: fp16 rows {@code sourceOffset +
     * (kvh * sourceCapacity + sourceStart + t) * headDim}, codes from byte {@code codeOffset} ({@code [kvHeads][tokens]
     * [headDim * bits / 8]}), σ/α from float {@code scaleOffset} ({@code [kvHeads][headDim]}).
     */
    public record Span(long sourceOffset, long sourceCapacity, long sourceStart, int tokens, long codeOffset,
            long scaleOffset) {
        public Span {
            if (tokens < 1) {
                throw new IllegalArgumentException("a span to quantize needs at least one token, got " + tokens);
            }
            if (sourceStart < 0 || sourceStart + tokens > sourceCapacity) {
                throw new IllegalArgumentException("span tokens " + sourceStart + ".." + (sourceStart + tokens)
                        + " fall outside its source rows 0.." + sourceCapacity);
            }
            for (long offset : new long[] {sourceOffset, codeOffset, scaleOffset}) {
                if (offset < 0 || offset % 16 != 0) {
                    throw new IllegalArgumentException("span offsets must be non-negative multiples of 16 (the kernel "
                            + "assumes 16-element alignment), got source " + sourceOffset + ", codes " + codeOffset
                            + ", scales " + scaleOffset);
                }
            }
        }
    }

    /**
     * A program takes at least this many tokens (several tiles if {@code BT} is smaller): fewer, longer programs pay
     * the group barrier less often. Measured on the H200 (e679b9e:docs/gpu-runs/2026-11-29-quantize-6-bracket.json): BT 64
     * with 2 tiles per program 57 % of copy bandwidth at B = 256, with 1 tile 35 %.
     */
    public static final int MIN_CHUNK_TOKENS = 128;

    /** The kernel's per-group counters follow a head of this many int32 (the ticket counter and padding). */
    static final int SYNC_HEAD = 4;
    static final int SYNC_PER_GROUP = 4;

    private final List<Span> spans;
    private final int kvHeads;
    private final int headDim;
    private final int bits;
    private final int tilesPerProgram;
    private final long[] spanTable;
    private final int[] chunkTable;

    private QuantizePlan(List<Span> spans, int kvHeads, int headDim, int bits, int tilesPerProgram, long[] spanTable,
            int[] chunkTable) {
        this.spans = spans;
        this.kvHeads = kvHeads;
        this.headDim = headDim;
        this.bits = bits;
        this.tilesPerProgram = tilesPerProgram;
        this.spanTable = spanTable;
        this.chunkTable = chunkTable;
    }

    /**
     * @param tileTokens the variant's {@code BT}
     * @param residentPrograms programs of the variant the GPU holds at once; a group gets at most a quarter of them,
     *     so the barrier never waits on a program that cannot start, even with up to four such launches running at
     *     once on any streams (the rule of the one-launch decode too)
     */
    public static QuantizePlan of(List<Span> spans, int kvHeads, int headDim, int bits, int tileTokens,
            int residentPrograms) {
        if (spans.isEmpty()) {
            throw new IllegalArgumentException("no spans to quantize");
        }
        if (kvHeads < 1 || headDim < 16 || tileTokens < 1) {
            throw new IllegalArgumentException("kvHeads " + kvHeads + ", headDim " + headDim + ", tile " + tileTokens
                    + ": all must be positive (head dim at least 16)");
        }
        if (bits != 1 && bits != 2 && bits != 4 && bits != 8) {
            throw new IllegalArgumentException("bits must be 1, 2, 4 or 8, got " + bits);
        }
        if (residentPrograms < 4) {
            throw new IllegalArgumentException("the GPU holds " + residentPrograms + " quantize programs at once; "
                    + "the group barrier needs at least 4");
        }
        int maxTiles = 0;
        for (Span s : spans) {
            maxTiles = Math.max(maxTiles, Math.ceilDiv(s.tokens(), tileTokens));
        }
        int members = residentPrograms / 4;
        int tiles = Math.max(Math.ceilDiv(MIN_CHUNK_TOKENS, tileTokens), Math.ceilDiv(maxTiles, members));
        long chunkTokens = (long) tiles * tileTokens;
        long[] table = new long[spans.size() * CalibQuantKernels.QS_COLS];
        long chunks = 0;
        for (int i = 0; i < spans.size(); i++) {
            Span s = spans.get(i);
            long count = Math.ceilDiv(s.tokens(), chunkTokens);
            int at = i * CalibQuantKernels.QS_COLS;
            table[at] = s.sourceOffset();
            table[at + 1] = s.sourceCapacity();
            table[at + 2] = s.sourceStart();
            table[at + 3] = s.tokens();
            table[at + 4] = s.codeOffset();
            table[at + 5] = s.scaleOffset();
            table[at + 6] = chunks;
            table[at + 7] = count;
            chunks += count;
        }
        if (chunks * 2 * kvHeads > Integer.MAX_VALUE) {
            throw new IllegalArgumentException(chunks + " chunks of " + kvHeads + " KV heads exceed one launch's grid");
        }
        int[] chunkSpan = new int[(int) chunks];
        for (int i = 0; i < spans.size(); i++) {
            int first = (int) table[i * CalibQuantKernels.QS_COLS + 6];
            int count = (int) table[i * CalibQuantKernels.QS_COLS + 7];
            Arrays.fill(chunkSpan, first, first + count, i);
        }
        return new QuantizePlan(List.copyOf(spans), kvHeads, headDim, bits, tiles, table, chunkSpan);
    }

    public List<Span> spans() {
        return spans;
    }

    public int kvHeads() {
        return kvHeads;
    }

    /**
     * Refuses a plan made for another head dimension or bit width than the kernel about to run it: its offsets and
     * scratch sizes would not match what that kernel reads and writes.
     */
    public void requireGeometry(int kernelHeadDim, int kernelBits) {
        if (kernelHeadDim != headDim || kernelBits != bits) {
            throw new IllegalArgumentException("a quantize plan for head dim " + headDim + ", " + bits
                    + " bits cannot run on the kernel for head dim " + kernelHeadDim + ", " + kernelBits + " bits");
        }
    }

    /** The kernel's {@code TPP}: tiles of {@code BT} tokens per program ({@link #MIN_CHUNK_TOKENS}, more for very long spans). */
    public int tilesPerProgram() {
        return tilesPerProgram;
    }

    /** {@code qs_tab}: {@link CalibQuantKernels#QS_COLS} int64 per span. */
    public long[] spanTable() {
        return spanTable.clone();
    }

    /** {@code qc_tab}: the span index of each chunk row. */
    public int[] chunkTable() {
        return chunkTable.clone();
    }

    public int chunkRows() {
        return chunkTable.length;
    }

    /** Programs in the launch's 1-D grid. */
    public int programs() {
        return chunkTable.length * 2 * kvHeads;
    }

    /** (span, KV head, K or V) groups, each with its own statistics and counter. */
    public int groups() {
        return spans.size() * 2 * kvHeads;
    }

    /** Bytes of the one table buffer: {@code qs_tab} at 0, {@code qc_tab} at {@link #chunkTableOffset()}. */
    public long tableBytes() {
        return chunkTableOffset() + 4L * chunkTable.length;
    }

    public long chunkTableOffset() {
        return 8L * spanTable.length;
    }

    /** Writes both tables, little-endian as the device reads them, into {@code dst} from byte 0. */
    public void writeTables(MemorySegment dst) {
        if (dst.byteSize() < tableBytes()) {
            throw new IllegalArgumentException("table segment of " + dst.byteSize() + " bytes; the plan needs "
                    + tableBytes());
        }
        MemorySegment.copy(spanTable, 0, dst, ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0,
                spanTable.length);
        MemorySegment.copy(chunkTable, 0, dst, ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN),
                chunkTableOffset(), chunkTable.length);
    }

    /** Bytes of the launch's scratch: the counters, then the statistics; zeroed on the stream before each launch. */
    public long scratchBytes() {
        return statsOffset() + 4L * groups() * 2 * headDim;
    }

    /** Byte offset of the statistics in the scratch, after the counters (a multiple of 16). */
    public long statsOffset() {
        return 4L * (SYNC_HEAD + (long) SYNC_PER_GROUP * groups());
    }

    /**
     * Checks that every span's rows, codes and scales lie inside buffers of these sizes (elements of each), so the
     * kernel cannot write or read past them.
     */
    public void requireWithin(long sourceElements, long codeBytes, long scaleFloats) {
        long rowBytes = (long) headDim * bits / 8;
        for (int i = 0; i < spans.size(); i++) {
            Span s = spans.get(i);
            long source = s.sourceOffset() + (long) kvHeads * s.sourceCapacity() * headDim;
            long codes = s.codeOffset() + (long) kvHeads * s.tokens() * rowBytes;
            long scales = s.scaleOffset() + (long) kvHeads * headDim;
            if (source > sourceElements || codes > codeBytes || scales > scaleFloats) {
                throw new IllegalArgumentException("span " + i + " needs " + source + " source elements, " + codes
                        + " code bytes and " + scales + " scale floats; the buffers hold " + sourceElements + ", "
                        + codeBytes + " and " + scaleFloats);
            }
        }
    }
}
