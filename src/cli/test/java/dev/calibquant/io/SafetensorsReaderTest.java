package dev.calibquant.io;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.quant.DType;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.NoSuchElementException;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class SafetensorsReaderTest {

    @TempDir
    Path dir;

    /** A file with the given header text and {@code dataBytes} bytes of data after it. */
    private Path raw(String header, int dataBytes) throws IOException {
        byte[] json = header.getBytes(StandardCharsets.UTF_8);
        return rawWithLength(json.length, json, dataBytes);
    }

    private Path rawWithLength(long declaredLength, byte[] header, int dataBytes) throws IOException {
        ByteBuffer buffer = ByteBuffer.allocate(8 + header.length + dataBytes).order(ByteOrder.LITTLE_ENDIAN);
        buffer.putLong(declaredLength).put(header);
        for (int i = 0; i < dataBytes; i++) {
            buffer.put((byte) (i * 31 + 7));
        }
        Path file = Files.createTempFile(dir, "raw", ".safetensors");
        Files.write(file, buffer.array());
        return file;
    }

    private static void assertFormatError(Path file, String... fragments) {
        assertThatThrownBy(() -> SafetensorsReader.open(file).close())
                .isInstanceOf(SafetensorsFormatException.class)
                .hasMessageContaining(file.toString())
                .hasMessageContainingAll(fragments);
    }

    @Test
    void readsAHandWrittenFile() throws IOException {
        // 2x2 F16 then a 3-element F32, with metadata: the layout the Python reference writes.
        Path file = raw("{\"__metadata__\":{\"format\":\"pt\"},"
                + "\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,8]},"
                + "\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[8,20]}}  ", 20);
        try (SafetensorsReader reader = SafetensorsReader.open(file)) {
            assertThat(reader.names()).containsExactly("a", "b");
            assertThat(reader.metadata()).containsExactly(java.util.Map.entry("format", "pt"));
            SafetensorsTensor b = reader.tensor("b");
            assertThat(b.dtype()).isEqualTo(DType.FP32);
            assertThat(b.shape()).containsExactly(3);
            assertThat(b.elementCount()).isEqualTo(3);
            assertThat(b.data().byteSize()).isEqualTo(12);
            assertThat(b.data().get(ValueLayout.JAVA_BYTE, 0)).isEqualTo((byte) (8 * 31 + 7));
            assertThat(b.data().isReadOnly()).isTrue();
            assertThatThrownBy(() -> reader.tensor("c")).isInstanceOf(NoSuchElementException.class)
                    .hasMessageContaining("'c'");
        }
    }

    @Test
    void fileShorterThanTheLengthField() throws IOException {
        Path file = dir.resolve("short.safetensors");
        Files.write(file, new byte[5]);
        assertFormatError(file, "5 bytes", "8-byte header length");
    }

    @Test
    void headerLengthPastTheEndOfTheFile() throws IOException {
        byte[] json = "{}".getBytes(StandardCharsets.UTF_8);
        assertFormatError(rawWithLength(50, json, 0), "header of 50 bytes", "truncated");
    }

    @Test
    void headerLengthNegativeOrHuge() throws IOException {
        byte[] json = "{}".getBytes(StandardCharsets.UTF_8);
        assertFormatError(rawWithLength(-3, json, 0), "header of -3 bytes");
        assertFormatError(rawWithLength(Long.MAX_VALUE, json, 0), "header of " + Long.MAX_VALUE);
    }

    @Test
    void malformedJson() throws IOException {
        assertFormatError(raw("{\"a\": {\"dtype\": \"F16\",", 0), "not valid JSON");
        assertFormatError(raw("{\"a\":1} {}", 0), "not valid JSON");
        assertFormatError(raw("[1,2,3]", 0), "not a JSON object");
    }

    @Test
    void duplicateTensorNames() throws IOException {
        String entry = "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}";
        assertFormatError(raw("{\"a\":" + entry + ",\"a\":" + entry + "}", 4), "not valid JSON", "Duplicate");
    }

    @Test
    void unsupportedDtypeIsNamed() throws IOException {
        assertFormatError(raw("{\"ids\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8),
                "'ids'", "unsupported dtype 'I64'", "F16, BF16, F32");
    }

    @Test
    void missingOrMistypedFields() throws IOException {
        assertFormatError(raw("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4), "'a'", "dtype");
        assertFormatError(raw("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4), "'a'", "'shape'");
        assertFormatError(raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4), "'a'", "'data_offsets'");
        assertFormatError(raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4),
                "'shape'", "-1", "non-negative integer");
        assertFormatError(raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4),
                "'shape'", "1.5");
        assertFormatError(raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8),
                "data_offsets has 3 numbers");
        assertFormatError(raw("{\"a\":7}", 0), "'a'", "not a JSON object");
        assertFormatError(raw("{\"__metadata__\":{\"k\":3}}", 0), "metadata 'k'", "not a string");
        assertFormatError(raw("{\"__metadata__\":[1]}", 0), "__metadata__", "not a JSON object");
    }

    @Test
    void offsetsOutOfOrderOrPastTheData() throws IOException {
        assertFormatError(raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8),
                "[8, 4]", "end before they begin");
        // 4 bytes short: a file cut during its data
        assertFormatError(raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4),
                "[0, 8]", "past the 4 bytes of data", "truncated");
    }

    @Test
    void sizeDisagreeingWithShape() throws IOException {
        assertFormatError(raw("{\"a\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,10]}}", 10),
                "'a'", "10 bytes", "needs 12");
        assertFormatError(raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],"
                + "\"data_offsets\":[0,4]}}", 4), "overflows");
    }

    @Test
    void overlappingTensors() throws IOException {
        assertFormatError(raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                + "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12),
                "overlapping tensors 'a' [0, 8) and 'b' [4, 12)");
    }

    @Test
    void emptyTensorsDoNotOverlap() throws IOException {
        Path file = raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                + "\"e\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[4,4]}}", 8);
        try (SafetensorsReader reader = SafetensorsReader.open(file)) {
            assertThat(reader.tensor("e").elementCount()).isZero();
        }
    }

    @Test
    void useAfterCloseNamesTheReader() throws IOException {
        Path file = raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
        SafetensorsReader reader = SafetensorsReader.open(file);
        MemorySegment data = reader.tensor("a").data();
        reader.close();
        reader.close(); // idempotent
        assertThatThrownBy(() -> reader.tensor("a")).isInstanceOf(IllegalStateException.class)
                .hasMessageContaining(file.toString()).hasMessageContaining("closed");
        assertThatThrownBy(() -> data.get(ValueLayout.JAVA_BYTE, 0)).isInstanceOf(IllegalStateException.class);
    }

    @Test
    void writerRejectsBadTensorsAndLeavesNoFile() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            SafetensorsWriter writer = new SafetensorsWriter();
            MemorySegment six = arena.allocate(6);
            assertThatThrownBy(() -> writer.add("x", DType.FP16, new long[] {2, 2}, six))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("needs 8");
            assertThatThrownBy(() -> writer.add("__metadata__", DType.FP16, new long[] {3}, six))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("reserved");
            assertThatThrownBy(() -> writer.add("x", DType.FP16, new long[] {-3}, six))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("negative");
            writer.add("x", DType.FP16, new long[] {3}, six);
            assertThatThrownBy(() -> writer.add("x", DType.FP16, new long[] {3}, six))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("already added");
        }
        try (var files = Files.list(dir)) {
            assertThat(files).isEmpty();
        }
    }

    /**
     * Whatever the writer accepts, its reader reads back: a metadata entry without a string key and value (which the
     * reader rejects as "not a string") and a shape whose byte count overflows are refused when given, with the
     * documented {@link IllegalArgumentException}, and no file is left.
     */
    @Test
    void writerRejectsWhatTheReaderWouldRejectWhenGiven() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            SafetensorsWriter writer = new SafetensorsWriter();
            assertThatThrownBy(() -> writer.metadata("spans", null))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("spans");
            assertThatThrownBy(() -> writer.metadata(null, "x"))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("null");
            assertThatThrownBy(() -> writer.add("big", DType.FP32, new long[] {1L << 40, 1L << 40}, arena.allocate(4)))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("overflows");
            Path file = dir.resolve("ok.safetensors");
            writer.metadata("k", "v").add("x", DType.FP32, new long[] {1}, arena.allocate(4)).write(file);
            try (SafetensorsReader reader = SafetensorsReader.open(file)) {
                assertThat(reader.metadata()).containsExactly(java.util.Map.entry("k", "v"));
                assertThat(reader.names()).containsExactly("x");
            }
        }
    }

    @Test
    void writerAlignsTheDataTo8Bytes() throws IOException {
        try (Arena arena = Arena.ofConfined()) {
            Path file = dir.resolve("aligned.safetensors");
            new SafetensorsWriter().add("odd_name_", DType.FP32, new long[] {1}, arena.allocate(4)).write(file);
            byte[] bytes = Files.readAllBytes(file);
            long headerLength = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).getLong();
            assertThat(headerLength % 8).isZero();
            assertThat(bytes.length).isEqualTo(8 + headerLength + 4);
        }
    }
}
