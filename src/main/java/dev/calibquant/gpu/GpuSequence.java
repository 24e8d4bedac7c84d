package dev.calibquant.gpu;

import dev.calibquant.cache.MemoryUsage;
import dev.calibquant.cache.TokenSpan;
import java.util.List;

/**
 * One sequence of a {@link GpuKvCache}: its regions in the cache's device pools, reserved for every layer when it
 * is created (prompt plus {@code maxNewTokens} generated tokens), freed by {@link #close()}.
 */
public final class GpuSequence implements AutoCloseable {
    private final GpuKvCache cache;
    private final long id;
    private final int promptTokens;
    private final List<TokenSpan> spans; // quantized spans; empty in an fp16 cache
    private final int fullCapacity;
    final long[] fullOffset;   // per layer, fp16 elements in the full-precision pool
    final int[] fullLength;    // per layer, full-precision tokens stored
    final long[][] codeOffset; // per layer, per span, bytes in the code pool
    final long[][] scaleOffset; // per layer, per span, floats in the scale pool
    final boolean[] filled;
    private boolean closed;

    GpuSequence(GpuKvCache cache, long id, int promptTokens, List<TokenSpan> spans, int fullCapacity, int layers) {
        this.cache = cache;
        this.id = id;
        this.promptTokens = promptTokens;
        this.spans = List.copyOf(spans);
        this.fullCapacity = fullCapacity;
        this.fullOffset = new long[layers];
        this.fullLength = new int[layers];
        this.codeOffset = new long[layers][spans.size()];
        this.scaleOffset = new long[layers][spans.size()];
        this.filled = new boolean[layers];
    }

    public long id() {
        return id;
    }

    public int promptTokens() {
        return promptTokens;
    }

    public List<TokenSpan> quantizedSpans() {
        return spans;
    }

    /** Full-precision rows reserved per layer and KV head: non-visual prompt tokens plus generated tokens. */
    public int fullCapacity() {
        return fullCapacity;
    }

    /** Full-precision tokens stored in {@code layer} (prefix, text, generated). */
    public synchronized int fullTokens(int layer) {
        checkOpen();
        return fullLength[layer];
    }

    public synchronized boolean isFilled(int layer) {
        checkOpen();
        return filled[layer];
    }

    public int visualTokens() {
        return spans.stream().mapToInt(TokenSpan::length).sum();
    }

    public MemoryUsage usage() {
        return cache.sequenceUsage(this);
    }

    synchronized boolean isClosed() {
        return closed;
    }

    synchronized void checkOpen() {
        if (closed) {
            throw new IllegalStateException("GPU sequence " + id + " is closed");
        }
    }

    synchronized boolean markClosed() {
        boolean was = closed;
        closed = true;
        return !was;
    }

    /** Frees this sequence's regions in the cache's pools. Idempotent. */
    @Override
    public void close() {
        cache.free(this);
    }

    @Override
    public String toString() {
        return "GPU sequence " + id + " (" + promptTokens + " prompt tokens, " + spans.size() + " quantized spans)";
    }
}
