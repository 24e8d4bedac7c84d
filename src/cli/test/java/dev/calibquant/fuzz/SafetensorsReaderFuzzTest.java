package dev.calibquant.fuzz;

import com.code_intelligence.jazzer.junit.FuzzTest;
import dev.calibquant.io.SafetensorsFormatException;
import dev.calibquant.io.SafetensorsReader;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * The safetensors reader on arbitrary bytes: it either reads the file or refuses it with a
 * {@link SafetensorsFormatException}; any other exception (or a hang, or a crash) is a finding. Runs the committed
 * corpus in every build (regression mode); {@code JAZZER_FUZZ=1} fuzzes (tools/dev/fuzz.sh).
 */
class SafetensorsReaderFuzzTest {

    @FuzzTest(maxDuration = "30s")
    void readsOrRefusesWithItsOwnException(byte[] bytes) throws IOException {
        Path file = Files.createTempFile("fuzz", ".safetensors");
        try {
            Files.write(file, bytes);
            try (SafetensorsReader reader = SafetensorsReader.open(file)) {
                reader.metadata();
                for (String name : reader.names()) {
                    reader.tensor(name);
                }
            } catch (SafetensorsFormatException expected) {
                // refused by name: what the reader promises for a malformed file
            }
        } finally {
            Files.deleteIfExists(file);
        }
    }
}
