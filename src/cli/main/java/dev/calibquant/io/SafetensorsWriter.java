package dev.calibquant.io;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.calibquant.quant.DType;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Writes a safetensors file from tensors given as (name, dtype, shape, little-endian bytes).
 *
 * <p>Tensors are laid out in the order they were added, the header padded with spaces so the data starts 8-byte
 * aligned (as the reference writer does). The segments are read only by {@link #write}; they stay the caller's.
 * The file is written through {@link OutputFile}: next to its destination and moved into place, so a failed write
 * leaves no partial file.
 */
public final class SafetensorsWriter {

    private static final ObjectMapper JSON = new ObjectMapper();
    private static final int COPY_CHUNK = 1 << 20;

    private record Pending(String name, DType dtype, long[] shape, MemorySegment data) {
    }

    private final List<Pending> tensors = new ArrayList<>();
    private final Set<String> names = new HashSet<>();
    private final Map<String, String> metadata = new LinkedHashMap<>();

    /**
     * Adds a tensor.
     *
     * @throws IllegalArgumentException when the name is empty, reserved or taken, a dimension is negative, or the
     *     data is not exactly product(shape) elements of {@code dtype}
     */
    public SafetensorsWriter add(String name, DType dtype, long[] shape, MemorySegment data) {
        if (name == null || name.isEmpty() || name.equals(SafetensorsReader.METADATA_KEY)) {
            throw new IllegalArgumentException("tensor name '" + name + "' is empty or reserved");
        }
        if (names.contains(name)) {
            throw new IllegalArgumentException("tensor '" + name + "' was already added");
        }
        long expected = dtype.byteSize();
        for (long d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException("tensor '" + name + "' has negative dimension in "
                        + Arrays.toString(shape));
            }
            try {
                expected = Math.multiplyExact(expected, d);
            } catch (ArithmeticException e) {
                throw new IllegalArgumentException("tensor '" + name + "' of shape " + Arrays.toString(shape)
                        + " overflows a 64-bit byte count", e);
            }
        }
        if (data.byteSize() != expected) {
            throw new IllegalArgumentException("tensor '" + name + "' has " + data.byteSize() + " bytes; shape "
                    + Arrays.toString(shape) + " of " + dtype + " needs " + expected);
        }
        tensors.add(new Pending(name, dtype, shape.clone(), data));
        names.add(name);
        return this;
    }

    /**
     * Adds a {@code __metadata__} entry.
     *
     * @throws IllegalArgumentException when the key or the value is null (the format holds strings only)
     */
    public SafetensorsWriter metadata(String key, String value) {
        if (key == null || value == null) {
            throw new IllegalArgumentException("metadata entries are strings, got key " + key + " with value "
                    + value);
        }
        metadata.put(key, value);
        return this;
    }

    /** Writes all tensors added so far to {@code path}, replacing any file there. */
    public void write(Path path) throws IOException {
        byte[] header = header();
        OutputFile.write(path, out -> {
            ByteBuffer length = ByteBuffer.allocate(Long.BYTES).order(ByteOrder.LITTLE_ENDIAN);
            length.putLong(header.length);
            out.write(length.array());
            out.write(header);
            byte[] chunk = new byte[COPY_CHUNK];
            for (Pending t : tensors) {
                for (long at = 0; at < t.data.byteSize(); at += COPY_CHUNK) {
                    int n = (int) Math.min(COPY_CHUNK, t.data.byteSize() - at);
                    MemorySegment.copy(t.data, ValueLayout.JAVA_BYTE, at, chunk, 0, n);
                    out.write(chunk, 0, n);
                }
            }
        });
    }

    private byte[] header() {
        ObjectNode root = JSON.createObjectNode();
        if (!metadata.isEmpty()) {
            ObjectNode meta = root.putObject(SafetensorsReader.METADATA_KEY);
            metadata.forEach(meta::put);
        }
        long offset = 0;
        for (Pending t : tensors) {
            ObjectNode entry = root.putObject(t.name);
            entry.put("dtype", SafetensorsDtypes.nameOf(t.dtype));
            ArrayNode shape = entry.putArray("shape");
            for (long d : t.shape) {
                shape.add(d);
            }
            entry.putArray("data_offsets").add(offset).add(offset + t.data.byteSize());
            offset += t.data.byteSize();
        }
        byte[] json = root.toString().getBytes(StandardCharsets.UTF_8);
        int padded = (json.length + 7) / 8 * 8;
        byte[] header = Arrays.copyOf(json, padded);
        Arrays.fill(header, json.length, padded, (byte) ' ');
        return header;
    }

}
