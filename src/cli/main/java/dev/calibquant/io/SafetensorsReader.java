package dev.calibquant.io;

import com.fasterxml.jackson.core.JacksonException;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.calibquant.quant.DType;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.Set;

/**
 * Reads a safetensors file: an 8-byte little-endian header length {@code N}, {@code N} bytes of JSON header
 * ({@code {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {string: string}}}), then the data, with
 * offsets relative to its start.
 *
 * <p>The file is memory-mapped into an arena this reader owns; {@link #close()} unmaps it, after which the data
 * segments of its tensors can no longer be read. Opening checks the whole header against the file before returning
 * (lengths, offsets, sizes, overlaps, dtypes), so a reader that opened holds only well-formed tensors. Only F16, BF16
 * and F32 tensors are accepted. Safe to read from several threads; close it once they are done.
 */
public final class SafetensorsReader implements AutoCloseable {

    /** The same bound the reference implementation puts on the header, against a corrupt length allocating gigabytes. */
    static final long MAX_HEADER_BYTES = 100_000_000L;

    static final String METADATA_KEY = "__metadata__";

    private static final ObjectMapper JSON = new ObjectMapper()
            .enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION)
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

    private final Path path;
    private final Arena arena;
    private final Map<String, SafetensorsTensor> tensors;
    private final Map<String, String> metadata;
    private volatile boolean closed;

    private SafetensorsReader(Path path, Arena arena, Map<String, SafetensorsTensor> tensors,
            Map<String, String> metadata) {
        this.path = path;
        this.arena = arena;
        this.tensors = tensors;
        this.metadata = metadata;
    }

    /**
     * Maps and checks {@code path}.
     *
     * @throws SafetensorsFormatException naming the problem, when the bytes are not a well-formed safetensors file
     *     of supported dtypes; nothing stays mapped
     * @throws IOException when the file cannot be read
     */
    public static SafetensorsReader open(Path path) throws IOException {
        Arena arena = Arena.ofShared();
        try (FileChannel channel = FileChannel.open(path, StandardOpenOption.READ)) {
            long fileSize = channel.size();
            if (fileSize < Long.BYTES) {
                throw error(path, "is " + fileSize + " bytes, shorter than the 8-byte header length field");
            }
            MemorySegment file = channel.map(FileChannel.MapMode.READ_ONLY, 0, fileSize, arena);
            long headerLength = file.get(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0);
            if (headerLength < 2 || headerLength > MAX_HEADER_BYTES) {
                throw error(path, "declares a header of " + headerLength + " bytes; expected 2 to "
                        + MAX_HEADER_BYTES);
            }
            if (headerLength > fileSize - Long.BYTES) {
                throw error(path, "declares a header of " + headerLength + " bytes but only "
                        + (fileSize - Long.BYTES) + " bytes follow the length field (truncated file?)");
            }
            byte[] headerBytes = file.asSlice(Long.BYTES, headerLength).toArray(ValueLayout.JAVA_BYTE);
            MemorySegment data = file.asSlice(Long.BYTES + headerLength).asReadOnly();
            SafetensorsReader reader = parseHeader(path, arena, headerBytes, data);
            return reader;
        } catch (IOException | RuntimeException | Error e) {
            arena.close();
            throw e;
        }
    }

    private static SafetensorsReader parseHeader(Path path, Arena arena, byte[] headerBytes, MemorySegment data)
            throws SafetensorsFormatException {
        JsonNode root;
        try {
            root = JSON.readTree(headerBytes);
        } catch (JacksonException e) {
            throw error(path, "has a header that is not valid JSON: " + e.getOriginalMessage(), e);
        } catch (IOException e) {
            throw error(path, "has an unreadable header: " + e.getMessage(), e);
        }
        if (root == null || !root.isObject()) {
            throw error(path, "has a header that is not a JSON object");
        }
        Map<String, String> metadata = Map.of();
        List<Entry> entries = new ArrayList<>();
        for (Map.Entry<String, JsonNode> field : root.properties()) {
            if (field.getKey().equals(METADATA_KEY)) {
                metadata = parseMetadata(path, field.getValue());
            } else {
                entries.add(parseEntry(path, field.getKey(), field.getValue(), data.byteSize()));
            }
        }
        checkNoOverlap(path, entries);
        Map<String, SafetensorsTensor> tensors = new LinkedHashMap<>();
        for (Entry e : entries) {
            tensors.put(e.name, new SafetensorsTensor(e.name, e.dtype, e.shape, data.asSlice(e.begin, e.end - e.begin)));
        }
        return new SafetensorsReader(path, arena, Collections.unmodifiableMap(tensors), metadata);
    }

    private record Entry(String name, DType dtype, long[] shape, long begin, long end) {
    }

    private static Map<String, String> parseMetadata(Path path, JsonNode node) throws SafetensorsFormatException {
        if (!node.isObject()) {
            throw error(path, "has a " + METADATA_KEY + " that is not a JSON object");
        }
        Map<String, String> metadata = new LinkedHashMap<>();
        for (Map.Entry<String, JsonNode> field : node.properties()) {
            if (!field.getValue().isTextual()) {
                throw error(path, "has metadata '" + field.getKey() + "' that is not a string");
            }
            metadata.put(field.getKey(), field.getValue().textValue());
        }
        return Collections.unmodifiableMap(metadata);
    }

    private static Entry parseEntry(Path path, String name, JsonNode node, long dataSize)
            throws SafetensorsFormatException {
        String what = "tensor '" + name + "'";
        if (!node.isObject()) {
            throw error(path, "has " + what + " whose header entry is not a JSON object");
        }
        JsonNode dtypeNode = node.get("dtype");
        if (dtypeNode == null || !dtypeNode.isTextual()) {
            throw error(path, "has " + what + " without a string 'dtype'");
        }
        DType dtype = SafetensorsDtypes.fromName(dtypeNode.textValue());
        if (dtype == null) {
            throw error(path, "has " + what + " of unsupported dtype '" + dtypeNode.textValue()
                    + "' (supported: " + SafetensorsDtypes.SUPPORTED + ")");
        }
        long[] shape = nonNegativeLongs(path, what, "shape", node.get("shape"));
        long[] offsets = nonNegativeLongs(path, what, "data_offsets", node.get("data_offsets"));
        if (offsets.length != 2) {
            throw error(path, "has " + what + " whose data_offsets has " + offsets.length + " numbers, not 2");
        }
        long begin = offsets[0];
        long end = offsets[1];
        if (begin > end) {
            throw error(path, "has " + what + " whose data_offsets [" + begin + ", " + end + "] end before they begin");
        }
        if (end > dataSize) {
            throw error(path, "has " + what + " whose data_offsets [" + begin + ", " + end + "] run past the "
                    + dataSize + " bytes of data (truncated file?)");
        }
        long expected;
        try {
            expected = dtype.byteSize();
            for (long d : shape) {
                expected = Math.multiplyExact(expected, d);
            }
        } catch (ArithmeticException e) {
            throw error(path, "has " + what + " whose shape overflows a 64-bit byte count", e);
        }
        if (end - begin != expected) {
            throw error(path, "has " + what + " of " + (end - begin) + " bytes; its shape "
                    + java.util.Arrays.toString(shape) + " of " + dtypeNode.textValue() + " needs " + expected);
        }
        return new Entry(name, dtype, shape, begin, end);
    }

    private static long[] nonNegativeLongs(Path path, String what, String key, JsonNode node)
            throws SafetensorsFormatException {
        if (node == null || !node.isArray()) {
            throw error(path, "has " + what + " without an array '" + key + "'");
        }
        long[] values = new long[node.size()];
        for (int i = 0; i < values.length; i++) {
            JsonNode v = node.get(i);
            if (!v.isIntegralNumber() || !v.canConvertToLong() || v.longValue() < 0) {
                throw error(path, "has " + what + " whose '" + key + "' holds " + v + ", not a non-negative integer");
            }
            values[i] = v.longValue();
        }
        return values;
    }

    private static void checkNoOverlap(Path path, List<Entry> entries) throws SafetensorsFormatException {
        List<Entry> byBegin = new ArrayList<>(entries);
        byBegin.removeIf(e -> e.begin == e.end); // an empty tensor occupies no bytes
        byBegin.sort(Comparator.comparingLong(Entry::begin));
        for (int i = 1; i < byBegin.size(); i++) {
            Entry previous = byBegin.get(i - 1);
            Entry current = byBegin.get(i);
            if (current.begin < previous.end) {
                throw error(path, "has overlapping tensors '" + previous.name + "' [" + previous.begin + ", "
                        + previous.end + ") and '" + current.name + "' [" + current.begin + ", " + current.end + ")");
            }
        }
    }

    private static SafetensorsFormatException error(Path path, String problem) {
        return new SafetensorsFormatException("safetensors file " + path + " " + problem);
    }

    private static SafetensorsFormatException error(Path path, String problem, Throwable cause) {
        return new SafetensorsFormatException("safetensors file " + path + " " + problem, cause);
    }

    public Path path() {
        return path;
    }

    /** Tensor names in header order. */
    public Set<String> names() {
        checkOpen();
        return tensors.keySet();
    }

    public boolean contains(String name) {
        checkOpen();
        return tensors.containsKey(name);
    }

    /** @throws NoSuchElementException naming the tensor and the file when there is no such tensor */
    public SafetensorsTensor tensor(String name) {
        checkOpen();
        SafetensorsTensor tensor = tensors.get(name);
        if (tensor == null) {
            throw new NoSuchElementException("safetensors file " + path + " has no tensor '" + name + "'");
        }
        return tensor;
    }

    /** The {@code __metadata__} string map (empty when the file has none). */
    public Map<String, String> metadata() {
        checkOpen();
        return metadata;
    }

    private void checkOpen() {
        if (closed) {
            throw new IllegalStateException("safetensors reader of " + path + " is closed");
        }
    }

    /** Unmaps the file; idempotent. Tensor data read from this reader can no longer be accessed. */
    @Override
    public synchronized void close() {
        if (!closed) {
            closed = true;
            arena.close();
        }
    }
}
