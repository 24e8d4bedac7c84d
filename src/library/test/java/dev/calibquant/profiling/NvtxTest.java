package dev.calibquant.profiling;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.junit.jupiter.api.Assumptions.assumeFalse;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class NvtxTest {
    private static final Path TOOLKIT_LIBRARY = Path.of("/usr/local/cuda/lib64", NvtxLibrary.SONAME);

    /** Records the calls instead of making them, with a per-thread depth like NVTX's own stack. */
    private static final class RecordingApi implements NvtxApi {
        final List<String> calls = new ArrayList<>();
        int depth;
        int maxDepth;

        @Override
        public MemorySegment createDomain(MemorySegment name) {
            calls.add("create " + name.getString(0));
            return MemorySegment.ofAddress(0x1000);
        }

        @Override
        public void destroyDomain(MemorySegment domain) {
            calls.add("destroy");
        }

        @Override
        public int push(MemorySegment domain, MemorySegment attributes) {
            MemorySegment a = attributes.reinterpret(Nvtx.EVENT_ATTRIBUTES.byteSize());
            String message = a.get(ValueLayout.ADDRESS, 40).reinterpret(Long.MAX_VALUE).getString(0);
            calls.add("push " + message);
            maxDepth = Math.max(maxDepth, ++depth);
            return depth - 1;
        }

        @Override
        public int pop(MemorySegment domain) {
            calls.add("pop");
            return --depth;
        }
    }

    @Test
    void eventAttributesHaveTheLayoutOfNvToolsExt() {
        // nvtxEventAttributes_v2: version u16, size u16, category u32, colorType i32, color u32, payloadType i32,
        // reserved0 i32, payload (8-byte union), messageType i32, message (8-byte union): 48 bytes, message at 40
        assertThat(Nvtx.EVENT_ATTRIBUTES.byteSize()).isEqualTo(48);
        assertThat(Nvtx.EVENT_ATTRIBUTES.byteOffset(java.lang.foreign.MemoryLayout.PathElement.groupElement("message")))
                .isEqualTo(40);
        assertThat(Nvtx.EVENT_ATTRIBUTES.byteOffset(java.lang.foreign.MemoryLayout.PathElement.groupElement("messageType")))
                .isEqualTo(32);
    }

    @Test
    void theToolkitLibraryBindsAndItsCallsRunWithoutAProfiler() {
        assumeTrue(Files.isRegularFile(TOOLKIT_LIBRARY), "no CUDA toolkit NVTX library at " + TOOLKIT_LIBRARY);
        try (Nvtx nvtx = Nvtx.open(Nvtx.Settings.of("true", null, TOOLKIT_LIBRARY.toString()), Map.of())) {
            assertThat(nvtx.enabled()).isTrue();
            assertThat(nvtx.status()).startsWith("on").contains(TOOLKIT_LIBRARY.toString()).contains("calibquant");
            Nvtx.Name outer = nvtx.name("decode_step");
            Nvtx.Name inner = nvtx.name("calibquant_decode_b1_d128_mm2");
            assertThat(nvtx.name("decode_step")).isSameAs(outer);
            for (int i = 0; i < 1000; i++) {
                try (Nvtx.Range a = nvtx.push(outer); Nvtx.Range b = nvtx.push(inner)) {
                    assertThat(a).isNotNull();
                }
            }
        }
    }

    @Test
    void theLibraryIsFoundUnderCudaHomeAndThroughTheLoaderWithoutAnExplicitPath() {
        assumeTrue(Files.isRegularFile(TOOLKIT_LIBRARY), "no CUDA toolkit NVTX library at " + TOOLKIT_LIBRARY);
        assertThat(NvtxLibrary.candidates(null, Map.of("CUDA_HOME", "/opt/a", "CUDA_PATH", "/opt/b")))
                .containsExactly(Path.of("/opt/a/lib64", NvtxLibrary.SONAME), Path.of("/opt/b/lib64", NvtxLibrary.SONAME),
                        TOOLKIT_LIBRARY, null);
        try (Nvtx nvtx = Nvtx.open(Nvtx.Settings.of(null, "/some/injection.so", null), Map.of("CUDA_HOME", "/nonexistent"))) {
            assertThat(nvtx.enabled()).isTrue();
            assertThat(nvtx.status()).contains("a profiler is attached").contains(TOOLKIT_LIBRARY.toString());
        }
    }

    @Test
    void aMissingLibraryLeavesRangesOffAndSaysWhy() {
        String missing = "/nonexistent/dir/" + NvtxLibrary.SONAME;
        try (Nvtx nvtx = Nvtx.open(Nvtx.Settings.of("true", null, missing), Map.of())) {
            assertThat(nvtx.enabled()).isFalse();
            assertThat(nvtx.status()).startsWith("off").contains(missing).contains("no such file");
            Nvtx.Name n = nvtx.name("prefill");
            assertThat(n).isSameAs(Nvtx.Name.NONE);
            assertThat(nvtx.push(n)).isSameAs(Nvtx.NO_RANGE);
        }
    }

    @Test
    void aLibraryWithoutTheNvtxCallsLeavesRangesOffAndSaysWhy() {
        Path other = Path.of(System.getProperty("java.home"), "lib", "libjava.so");
        assumeTrue(Files.isRegularFile(other), "no " + other);
        try (Nvtx nvtx = Nvtx.open(Nvtx.Settings.of("true", null, other.toString()), Map.of())) {
            assertThat(nvtx.enabled()).isFalse();
            assertThat(nvtx.status()).contains(other.toString()).contains("does not export nvtxDomainCreateA");
        }
    }

    @Test
    void theSwitchAndTheProfilerDecide() {
        assertThat(Nvtx.Settings.of(null, null, null).wanted()).isFalse();
        assertThat(Nvtx.Settings.of(null, "", null).wanted()).isFalse();
        assertThat(Nvtx.Settings.of(null, "/opt/nsight/libInjection.so", null).wanted()).isTrue();
        assertThat(Nvtx.Settings.of("true", null, null).wanted()).isTrue();
        assertThat(Nvtx.Settings.of("false", "/opt/nsight/libInjection.so", null).wanted()).isFalse();
        assertThat(Nvtx.Settings.of("false", "/opt/nsight/libInjection.so", null).why()).contains("=false");
    }

    @Test
    void rangesStayBalancedWhenTheBodyThrows() {
        RecordingApi api = new RecordingApi();
        try (Nvtx nvtx = Nvtx.withApi(api)) {
            Nvtx.Name step = nvtx.name("decode_step");
            Nvtx.Name kernel = nvtx.name("fp16_decode_d128");
            assertThatThrownBy(() -> {
                try (Nvtx.Range a = nvtx.push(step)) {
                    try (Nvtx.Range b = nvtx.push(kernel)) {
                        throw new IllegalStateException("launch failed");
                    }
                }
            }).hasMessage("launch failed");
            try (Nvtx.Range a = nvtx.push(step)) {
                assertThat(api.depth).isEqualTo(1);
            }
            assertThat(api.depth).isZero();
            assertThat(api.maxDepth).isEqualTo(2);
            assertThat(api.calls).containsExactly("create calibquant", "push decode_step", "push fp16_decode_d128", "pop",
                    "pop", "push decode_step", "pop");
        }
        assertThat(api.calls).endsWith("destroy");
    }

    @Test
    void aNameIsBuiltOnceAndChecked() {
        RecordingApi api = new RecordingApi();
        try (Nvtx nvtx = Nvtx.withApi(api)) {
            assertThat(nvtx.name("prefill")).isSameAs(nvtx.name("prefill")).extracting(Nvtx.Name::text).isEqualTo("prefill");
            assertThatThrownBy(() -> nvtx.name("")).isInstanceOf(IllegalArgumentException.class);
            assertThatThrownBy(() -> nvtx.name("decode\nstep")).isInstanceOf(IllegalArgumentException.class);
            assertThatThrownBy(() -> nvtx.name("é")).isInstanceOf(IllegalArgumentException.class);
            try (Nvtx other = Nvtx.withApi(new RecordingApi())) {
                Nvtx.Name foreign = other.name("prefill");
                assertThatThrownBy(() -> nvtx.push(foreign)).isInstanceOf(IllegalArgumentException.class)
                        .hasMessageContaining("another Nvtx");
            }
        }
    }

    @Test
    void aClosedInstanceRefusesToPush() {
        Nvtx nvtx = Nvtx.withApi(new RecordingApi());
        Nvtx.Name n = nvtx.name("prefill");
        nvtx.close();
        nvtx.close();
        assertThatThrownBy(() -> nvtx.push(n)).isInstanceOf(IllegalStateException.class);
    }

    @Test
    void whileOffTheProcessWideRangesAreOneSharedObjectAndAllocateNothing() {
        assumeFalse(Nvtx.process().enabled(), "NVTX is on in this JVM (" + Nvtx.process().status() + ")");
        Nvtx.Name name = Nvtx.rangeName("decode_step");
        assertThat(name).isSameAs(Nvtx.Name.NONE);
        assertThat(Nvtx.range(name)).isSameAs(Nvtx.NO_RANGE);
        com.sun.management.ThreadMXBean threads = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
        long id = Thread.currentThread().threadId();
        int sink = 0;
        for (int i = 0; i < 10_000; i++) { // warm-up
            try (Nvtx.Range r = Nvtx.range(Nvtx.rangeName("decode_step"))) {
                sink += r.hashCode() & 1;
            }
        }
        long before = threads.getThreadAllocatedBytes(id);
        for (int i = 0; i < 100_000; i++) {
            try (Nvtx.Range r = Nvtx.range(name)) {
                sink += r.hashCode() & 1;
            }
        }
        long allocated = threads.getThreadAllocatedBytes(id) - before;
        // one object per range would be >= 16 bytes each, 1.6 MB in all; what remains is the measurement's own
        // constant (about 1 KB: compilation, the MXBean call)
        assertThat(allocated).as("bytes allocated by 100,000 disabled ranges (sink %d)", sink).isLessThan(16_384);
    }

    @Test
    void theProcessWideInstanceIsNeverClosed() {
        assertThatThrownBy(() -> Nvtx.process().close()).isInstanceOf(IllegalStateException.class);
    }
}
