package dev.calibquant.sharding;

import dev.calibquant.quant.DType;
import dev.calibquant.quant.Elements;
import dev.calibquant.quant.InvalidShapeException;
import dev.calibquant.quant.NonFiniteInputException;
import java.lang.foreign.MemorySegment;
import java.util.Objects;

/** The checks a {@link ShardedKvCache} and its shards make on caller data before any shard is given a part of it. */
final class Inputs {
    /** Stands for "a shard's thread" when asking a segment who may read it; never started. */
    private static final Thread OTHER_THREAD = new Thread(() -> { });

    private Inputs() {
    }

    static void checkSize(String what, MemorySegment data, long expected, String shape) {
        if (data.byteSize() != expected) {
            throw new InvalidShapeException(what + " are " + data.byteSize() + " bytes; " + shape + " is " + expected
                    + " bytes");
        }
    }

    static void checkDtype(String what, DType given, DType stored) {
        if (given != stored) {
            throw new InvalidShapeException(what + ": data is " + given + " but the cache stores " + stored);
        }
    }

    /**
     * Rejects a NaN or infinity in {@code data}, {@code [heads][tokens][headDim]}, naming its head, its token counted
     * from {@code firstPosition} (none when negative) and its channel.
     */
    static void requireFinite(String tensor, MemorySegment data, DType dtype, int heads, int tokens, int headDim,
            int firstPosition) {
        float[] row = new float[headDim];
        short[] scratch = new short[headDim];
        for (int h = 0; h < heads; h++) {
            for (int n = 0; n < tokens; n++) {
                Elements.readRow(data, dtype, ((long) h * tokens + n) * headDim, row, 0, headDim, scratch);
                for (int d = 0; d < headDim; d++) {
                    if (!Float.isFinite(row[d])) {
                        throw new NonFiniteInputException(tensor, h, firstPosition < 0 ? -1 : firstPosition + n, d,
                                row[d]);
                    }
                }
            }
        }
    }

    /** Whether the shards' threads may read every one of {@code segments} (none is confined to the caller). */
    static boolean readableByShardThreads(MemorySegment... segments) {
        for (MemorySegment s : segments) {
            if (!s.isAccessibleBy(OTHER_THREAD)) {
                return false;
            }
        }
        return true;
    }

    /** A shard's name, checked: 1 to 100 printable characters. */
    static String checkShardName(String name) {
        Objects.requireNonNull(name, "name");
        if (name.isBlank() || name.length() > 100 || name.chars().anyMatch(Character::isISOControl)) {
            throw new IllegalArgumentException("a shard name must be 1 to 100 printable characters, got \""
                    + name.replaceAll("\\p{Cntrl}", "?") + "\"");
        }
        return name;
    }
}
