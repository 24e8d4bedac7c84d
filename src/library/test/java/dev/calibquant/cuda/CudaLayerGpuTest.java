package dev.calibquant.cuda;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import dev.calibquant.testing.GpuFixture;
import dev.calibquant.testing.GpuTest;
import java.io.IOException;
import java.io.InputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

@GpuTest
class CudaLayerGpuTest {
    @RegisterExtension
    final GpuFixture gpu = new GpuFixture();

    @Test
    void deviceReportsSaneProperties() {
        DeviceProperties p = gpu.context().device().properties();
        assertThat(p.name()).isNotBlank();
        assertThat(p.computeMajor()).isGreaterThanOrEqualTo(8);
        assertThat(p.multiprocessors()).isPositive();
        assertThat(p.totalMemoryBytes()).isGreaterThan(1L << 30);
        assertThat(p.warpSize()).isEqualTo(32);
        long[] info = gpu.context().memoryInfo();
        assertThat(info[0]).isPositive().isLessThanOrEqualTo(info[1]);
    }

    @Test
    void roundTripsRandomBytesAtOddSizesAndOffsets() {
        for (int size : new int[] {1, 3, 17, 4097, 1 << 20 | 5}) {
            byte[] data = new byte[size];
            gpu.random().nextBytes(data);
            int dstOffset = gpu.random().nextInt(7);
            try (DeviceBuffer buf = gpu.context().allocate(size + dstOffset + 3); Arena arena = Arena.ofConfined()) {
                buf.fill((byte) 0x5a);
                buf.copyFrom(MemorySegment.ofArray(data), 0, dstOffset, size); // heap source: staged
                MemorySegment back = arena.allocate(size + 2);
                back.fill((byte) 0x77);
                buf.copyTo(dstOffset, back, 1, size);
                assertThat(back.asSlice(1, size).toArray(ValueLayout.JAVA_BYTE)).isEqualTo(data);
                assertThat(back.get(ValueLayout.JAVA_BYTE, 0)).isEqualTo((byte) 0x77);
                assertThat(back.get(ValueLayout.JAVA_BYTE, size + 1)).isEqualTo((byte) 0x77);
                byte[] edge = new byte[1];
                buf.copyTo(dstOffset + size, MemorySegment.ofArray(edge), 0, 1);
                assertThat(edge[0]).isEqualTo((byte) 0x5a); // the byte after the copy is untouched
            }
        }
    }

    @Test
    void asyncCopiesThroughPinnedMemoryAndDeviceToDevice() {
        CudaContext ctx = gpu.context();
        int n = 123_457;
        try (PinnedHostBuffer host = ctx.allocatePinned(n); PinnedHostBuffer back = ctx.allocatePinned(n);
                DeviceBuffer a = ctx.allocate(n); DeviceBuffer b = ctx.allocate(n); CudaStream s = ctx.createStream()) {
            for (int i = 0; i < n; i++) {
                host.segment().set(ValueLayout.JAVA_BYTE, i, (byte) gpu.random().nextInt());
            }
            back.segment().fill((byte) 0);
            a.copyFromAsync(host, 0, 0, n, s);
            s.synchronize();
            b.copyFrom(a, 0, 0, n);
            b.copyToAsync(0, back, 0, n, s);
            s.synchronize();
            assertThat(back.segment().mismatch(host.segment())).isEqualTo(-1);
        }
    }

    /**
     * Peer copies: within one context a plain device-to-device copy; with a second GPU, between the two contexts,
     * with peer access where the pair allows it (a second GPU is named in the output when there is none).
     */
    @Test
    void peerCopiesAreBitForBitAndBoundsChecked() {
        CudaContext ctx = gpu.context();
        assertThat(ctx.canAccessPeer(ctx)).isTrue();
        assertThat(ctx.enablePeerAccess(ctx)).isTrue();
        int n = 65_537;
        byte[] data = new byte[n];
        gpu.random().nextBytes(data);
        try (DeviceBuffer a = ctx.allocate(n); DeviceBuffer b = ctx.allocate(n + 8); Arena arena = Arena.ofConfined()) {
            a.copyFrom(MemorySegment.ofArray(data));
            b.fill((byte) 0x5a);
            b.copyFromPeer(a, 1, 8, n - 1);
            MemorySegment back = arena.allocate(n + 8);
            b.copyTo(back);
            assertThat(back.asSlice(8, n - 1).toArray(ValueLayout.JAVA_BYTE))
                    .isEqualTo(java.util.Arrays.copyOfRange(data, 1, n));
            assertThat(back.get(ValueLayout.JAVA_BYTE, 7)).isEqualTo((byte) 0x5a);
            assertThatThrownBy(() -> b.copyFromPeer(a, 2, 8, n - 1)).isInstanceOf(IndexOutOfBoundsException.class);
            assertThatThrownBy(() -> b.copyFromPeer(a, 0, 10, n)).isInstanceOf(IndexOutOfBoundsException.class);
        }
        if (Cuda.deviceCount() < 2) {
            System.out.println("[calibquant] peer copies between two GPUs not run: this host has one GPU");
            return;
        }
        try (CudaContext other = Cuda.device(1).openContext(); DeviceBuffer a = ctx.allocate(n);
                DeviceBuffer far = other.allocate(n); DeviceBuffer back = ctx.allocate(n);
                Arena arena = Arena.ofConfined()) {
            boolean direct = ctx.enablePeerAccess(other) & other.enablePeerAccess(ctx);
            assertThat(direct).isEqualTo(ctx.canAccessPeer(other) && other.canAccessPeer(ctx));
            a.copyFrom(MemorySegment.ofArray(data));
            far.fill((byte) 0);
            far.copyFromPeer(a, 0, 0, n);
            back.fill((byte) 0);
            back.copyFromPeer(far, 0, 0, n);
            MemorySegment out = arena.allocate(n);
            back.copyTo(out);
            assertThat(out.toArray(ValueLayout.JAVA_BYTE)).isEqualTo(data);
            System.out.printf("[calibquant] peer copies between GPU 0 and GPU 1: bit for bit, %s%n",
                    direct ? "direct (peer access)" : "staged by the driver (no peer access)");
        }
    }

    @Test
    void fill32WritesTheBitPattern() {
        try (DeviceBuffer buf = gpu.context().allocate(64); Arena arena = Arena.ofConfined()) {
            buf.fill((byte) 0);
            buf.fill32(Float.floatToRawIntBits(Float.NaN), 8, 4);
            MemorySegment host = arena.allocate(64);
            buf.copyTo(host);
            assertThat(host.get(ValueLayout.JAVA_INT, 4)).isZero();
            for (int i = 2; i < 6; i++) {
                assertThat(Float.isNaN(host.getAtIndex(ValueLayout.JAVA_FLOAT, i))).isTrue();
            }
            assertThat(host.get(ValueLayout.JAVA_INT, 24)).isZero();
            assertThatThrownBy(() -> buf.fill32(0, 2, 1)).isInstanceOf(IllegalArgumentException.class);
            assertThatThrownBy(() -> buf.fill32(0, 60, 2)).isInstanceOf(IndexOutOfBoundsException.class);
        }
    }

    @Test
    void outOfRangeCopiesAreRejectedBeforeTheDriverAndChangeNothing() {
        try (DeviceBuffer buf = gpu.context().allocate(16); Arena arena = Arena.ofConfined()) {
            buf.fill((byte) 1);
            MemorySegment big = arena.allocate(32);
            MemorySegment small = arena.allocate(8);
            assertThatThrownBy(() -> buf.copyFrom(big)).isInstanceOf(IndexOutOfBoundsException.class)
                    .hasMessageContaining("device buffer of 16 bytes");
            assertThatThrownBy(() -> buf.copyFrom(small, 0, 12, 8)).isInstanceOf(IndexOutOfBoundsException.class);
            assertThatThrownBy(() -> buf.copyFrom(small, 4, 0, 8)).isInstanceOf(IndexOutOfBoundsException.class)
                    .hasMessageContaining("source segment");
            assertThatThrownBy(() -> buf.copyTo(small)).isInstanceOf(IndexOutOfBoundsException.class)
                    .hasMessageContaining("destination segment");
            assertThatThrownBy(() -> buf.copyTo(-1, small, 0, 1)).isInstanceOf(IndexOutOfBoundsException.class);
            assertThatThrownBy(() -> buf.address(17)).isInstanceOf(IndexOutOfBoundsException.class);
            MemorySegment back = arena.allocate(16);
            buf.copyTo(back);
            for (int i = 0; i < 16; i++) {
                assertThat(back.get(ValueLayout.JAVA_BYTE, i)).isEqualTo((byte) 1);
            }
        }
    }

    @Test
    void useAfterCloseFailsFastNamingTheObject() {
        DeviceBuffer buf = gpu.context().allocate(8);
        CudaStream stream = gpu.context().createStream();
        buf.close();
        buf.close(); // idempotent
        stream.close();
        assertThatThrownBy(() -> buf.fill((byte) 0)).isInstanceOf(IllegalStateException.class)
                .hasMessageContaining("device buffer of 8 bytes").hasMessageContaining("closed");
        assertThatThrownBy(stream::synchronize).isInstanceOf(IllegalStateException.class)
                .hasMessageContaining("CUDA stream");
    }

    @Test
    void closingTheContextFreesAndReportsLeaks() {
        CudaContext other = Cuda.device(0).openContext();
        DeviceBuffer leaked = other.allocate(1000);
        other.createEvent();
        assertThat(other.liveDeviceBytes()).isEqualTo(1000);
        assertThatThrownBy(other::close).isInstanceOf(ResourceLeakException.class)
                .hasMessageContaining("2 resource(s)").hasMessageContaining("device buffer of 1000 bytes");
        assertThat(leaked.isClosed()).isTrue();
        assertThatThrownBy(() -> other.allocate(8)).isInstanceOf(IllegalStateException.class);
        other.close(); // idempotent, nothing more to report
    }

    @Test
    void outOfMemoryIsTypedAndLeavesNothingBehind() {
        long before = gpu.context().liveDeviceBytes();
        assertThatThrownBy(() -> gpu.context().allocate(1L << 50)).isInstanceOf(CudaOutOfMemoryException.class)
                .hasMessageContaining("cuMemAlloc_v2").hasMessageContaining("CUDA_ERROR_OUT_OF_MEMORY");
        assertThat(gpu.context().liveDeviceBytes()).isEqualTo(before);
        assertThat(gpu.context().liveResources()).isZero();
    }

    @Test
    void launchesAKernelAndMatchesTheCpu() throws IOException {
        CudaContext ctx = gpu.context();
        Random rnd = gpu.random();
        int n = 100_003;
        float a = 1.0f + rnd.nextFloat();
        float[] x = new float[n];
        float[] y = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) rnd.nextGaussian();
            y[i] = (float) rnd.nextGaussian();
        }
        try (CudaModule m = ctx.loadPtx("scale_add", testPtx()); DeviceBuffer dx = ctx.allocate(4L * n);
                DeviceBuffer dy = ctx.allocate(4L * n); DeviceBuffer dout = ctx.allocate(4L * n);
                CudaStream s = ctx.createStream(); CudaEvent start = ctx.createEvent(); CudaEvent end = ctx.createEvent()) {
            dx.copyFrom(MemorySegment.ofArray(x));
            dy.copyFrom(MemorySegment.ofArray(y));
            dout.fill32(Float.floatToRawIntBits(Float.NaN), 0, n);
            CudaFunction f = m.function("scale_add");
            assertThat(f.registersPerThread()).isPositive();
            LaunchArgs args = new LaunchArgs().pointer(dx.address()).pointer(dy.address()).pointer(dout.address())
                    .f32(a).i32(n);
            start.record(s);
            f.launch((n + 255) / 256, 1, 1, 256, 0, s, args);
            end.record(s);
            end.synchronize();
            assertThat(end.elapsedMillisSince(start)).isPositive().isLessThan(1000f);
            float[] out = new float[n];
            dout.copyTo(MemorySegment.ofArray(out));
            for (int i = 0; i < n; i++) {
                // one fma or a mul+add: within one rounding of the fp32 result either way
                float expect = a * x[i] + y[i];
                assertThat(out[i]).as("out[%d]", i).isCloseTo(expect, org.assertj.core.api.Assertions.within(
                        2 * Math.ulp(Math.abs(a * x[i]) + Math.abs(y[i]))));
            }
            assertThatThrownBy(() -> f.launch(1, 1, 1, 4096, 0, s, args)).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("threads per block");
            assertThatThrownBy(() -> f.launch(0, 1, 1, 32, 0, s, args)).isInstanceOf(IllegalArgumentException.class);
            assertThatThrownBy(() -> m.function("no_such_kernel")).isInstanceOf(CudaException.class)
                    .hasMessageContaining("CUDA_ERROR_NOT_FOUND");
        }
    }

    @Test
    void invalidPtxCarriesTheJitLog() throws IOException {
        String broken = testPtx().replace("fma.rn.f32", "fma.rn.bogus32").replace("mul.f32", "mul.bogus32");
        assertThatThrownBy(() -> gpu.context().loadPtx("broken", broken))
                .isInstanceOfSatisfying(PtxLoadException.class, e -> {
                    assertThat(e.jitLog()).isNotBlank();
                    assertThat(e.getMessage()).contains("cuModuleLoadDataEx(broken)").contains("JIT log");
                });
        assertThatThrownBy(() -> gpu.context().loadPtx("future",
                testPtx().replaceFirst("\\.version \\d+\\.\\d+", ".version 99.0")))
                .isInstanceOf(PtxLoadException.class).hasMessageContaining("ISA 99.0");
        assertThat(gpu.context().liveResources()).isZero();
    }

    static String testPtx() throws IOException {
        try (InputStream in = CudaLayerGpuTest.class.getResourceAsStream("scale_add.ptx")) {
            return new String(in.readAllBytes(), StandardCharsets.UTF_8);
        }
    }
}
