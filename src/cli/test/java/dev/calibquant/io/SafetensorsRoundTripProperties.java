package dev.calibquant.io;

import static org.assertj.core.api.Assertions.assertThat;

import dev.calibquant.quant.DType;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.constraints.IntRange;

/** Whatever the writer writes, the reader gives back byte for byte (jqwik prints the seed of a failing case). */
class SafetensorsRoundTripProperties {

    @Property(tries = 60)
    void writtenTensorsReadBackIdentically(@ForAll @IntRange(min = 0, max = 5) int count, @ForAll long seed)
            throws IOException {
        Random random = new Random(seed);
        Path dir = Files.createTempDirectory("st-roundtrip");
        Path file = dir.resolve("t.safetensors");
        try (Arena arena = Arena.ofConfined()) {
            List<String> names = new ArrayList<>();
            List<DType> dtypes = new ArrayList<>();
            List<long[]> shapes = new ArrayList<>();
            List<MemorySegment> datas = new ArrayList<>();
            SafetensorsWriter writer = new SafetensorsWriter();
            for (int i = 0; i < count; i++) {
                DType dtype = DType.values()[random.nextInt(DType.values().length)];
                long[] shape = new long[random.nextInt(4)];
                long elements = 1;
                for (int a = 0; a < shape.length; a++) {
                    shape[a] = random.nextInt(6); // zero-sized dimensions included
                    elements *= shape[a];
                }
                MemorySegment data = arena.allocate(elements * dtype.byteSize());
                for (long b = 0; b < data.byteSize(); b++) {
                    data.set(ValueLayout.JAVA_BYTE, b, (byte) random.nextInt());
                }
                String name = "layers." + i + ".t" + random.nextInt(1000);
                writer.add(name, dtype, shape, data);
                names.add(name);
                dtypes.add(dtype);
                shapes.add(shape);
                datas.add(data);
            }
            writer.metadata("seed", Long.toString(seed)).metadata("visual_spans", "[[1,2]]");
            writer.write(file);

            try (SafetensorsReader reader = SafetensorsReader.open(file)) {
                assertThat(reader.names()).containsExactlyElementsOf(names);
                assertThat(reader.metadata()).containsEntry("seed", Long.toString(seed))
                        .containsEntry("visual_spans", "[[1,2]]");
                for (int i = 0; i < count; i++) {
                    SafetensorsTensor t = reader.tensor(names.get(i));
                    assertThat(t.dtype()).isEqualTo(dtypes.get(i));
                    assertThat(t.shape()).containsExactly(shapes.get(i));
                    assertThat(t.data().mismatch(datas.get(i))).isEqualTo(-1);
                }
            }
        } finally {
            Files.deleteIfExists(file);
            Files.delete(dir);
        }
    }
}
