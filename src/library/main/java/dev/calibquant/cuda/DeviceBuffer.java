package dev.calibquant.cuda;

import static dev.calibquant.cuda.bindings.CudaDriver.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Objects;

/**
 * Device memory of a fixed size. Every copy and memset is bounds-checked here, in Java, before the driver sees it:
 * a wrong offset is an {@link IndexOutOfBoundsException}, never a corrupted heap or a crashed JVM.
 */
public final class DeviceBuffer extends NativeResource {
    private final long address;
    private final long byteSize;

    private DeviceBuffer(CudaContext owner, long address, long byteSize) {
        super(owner);
        this.address = address;
        this.byteSize = byteSize;
    }

    static DeviceBuffer allocate(CudaContext owner, long bytes) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(C_LONG_LONG);
            InjectedFaults.before("cuMemAlloc_v2");
            Driver.check(cuMemAlloc_v2(out, bytes), "cuMemAlloc_v2(" + bytes + " bytes)");
            return new DeviceBuffer(owner, out.get(C_LONG_LONG, 0), bytes);
        }
    }

    public long byteSize() {
        return byteSize;
    }

    /** The device address of byte {@code offset}, for kernel arguments; checked against the buffer's size. */
    public long address(long offset) {
        checkOpen();
        Objects.checkIndex(offset, byteSize + 1); // one past the end is a valid address (an empty range)
        return address + offset;
    }

    public long address() {
        return address(0);
    }

    /** Copies all of {@code src} to the start of this buffer. */
    public void copyFrom(MemorySegment src) {
        copyFrom(src, 0, 0, src.byteSize());
    }

    /** Copies {@code bytes} from {@code src[srcOffset..]} to {@code this[dstOffset..]}, synchronously. */
    public void copyFrom(MemorySegment src, long srcOffset, long dstOffset, long bytes) {
        checkRange("source segment", src.byteSize(), srcOffset, bytes);
        checkRange(describe(), byteSize, dstOffset, bytes);
        checkOpen();
        if (bytes == 0) {
            return;
        }
        InjectedFaults.before("cuMemcpyHtoD_v2");
        withNative(src, srcOffset, bytes, true, (seg) ->
                Driver.check(cuMemcpyHtoD_v2(address + dstOffset, seg, bytes), "cuMemcpyHtoD_v2"));
        finishLegacyStream("cuMemcpyHtoD_v2");
    }

    /** Copies all of this buffer into {@code dst}, which must be at least as large. */
    public void copyTo(MemorySegment dst) {
        copyTo(0, dst, 0, byteSize);
    }

    /** Copies {@code bytes} from {@code this[srcOffset..]} to {@code dst[dstOffset..]}, synchronously. */
    public void copyTo(long srcOffset, MemorySegment dst, long dstOffset, long bytes) {
        checkRange(describe(), byteSize, srcOffset, bytes);
        checkRange("destination segment", dst.byteSize(), dstOffset, bytes);
        if (dst.isReadOnly()) {
            throw new IllegalArgumentException("destination segment is read-only");
        }
        checkOpen();
        if (bytes == 0) {
            return;
        }
        if (dst.isNative()) {
            InjectedFaults.before("cuMemcpyDtoH_v2");
            Driver.check(cuMemcpyDtoH_v2(dst.asSlice(dstOffset, bytes), address + srcOffset, bytes), "cuMemcpyDtoH_v2");
        } else {
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment staging = arena.allocate(bytes, 16);
                InjectedFaults.before("cuMemcpyDtoH_v2");
                Driver.check(cuMemcpyDtoH_v2(staging, address + srcOffset, bytes), "cuMemcpyDtoH_v2");
                MemorySegment.copy(staging, 0, dst, dstOffset, bytes);
            }
        }
    }

    /** Device-to-device copy of {@code bytes} from {@code src[srcOffset..]} to {@code this[dstOffset..]}. */
    public void copyFrom(DeviceBuffer src, long srcOffset, long dstOffset, long bytes) {
        checkDeviceCopy(src, srcOffset, dstOffset, bytes);
        if (bytes > 0) {
            InjectedFaults.before("cuMemcpyDtoD_v2");
            Driver.check(cuMemcpyDtoD_v2(address + dstOffset, src.address + srcOffset, bytes), "cuMemcpyDtoD_v2");
            finishLegacyStream("cuMemcpyDtoD_v2");
        }
    }

    /**
     * Copies {@code bytes} from {@code src[srcOffset..]}, which may belong to another context (another GPU), to
     * {@code this[dstOffset..]}; complete on return. Between contexts it is {@code cuMemcpyPeer}: direct where
     * {@link CudaContext#enablePeerAccess} was granted, staged by the driver otherwise. Within one context it is
     * {@link #copyFrom(DeviceBuffer, long, long, long)}.
     */
    public void copyFromPeer(DeviceBuffer src, long srcOffset, long dstOffset, long bytes) {
        if (src.owner() == owner()) {
            copyFrom(src, srcOffset, dstOffset, bytes);
            return;
        }
        checkDeviceCopy(src, srcOffset, dstOffset, bytes);
        if (bytes > 0) {
            InjectedFaults.before("cuMemcpyPeer");
            Driver.check(cuMemcpyPeer(address + dstOffset, owner().handle(), src.address + srcOffset,
                    src.owner().handle(), bytes), "cuMemcpyPeer");
            finishLegacyStream("cuMemcpyPeer");
        }
    }

    /** Both ranges inside their buffers, both buffers open; this buffer's context is left current. */
    private void checkDeviceCopy(DeviceBuffer src, long srcOffset, long dstOffset, long bytes) {
        checkRange(src.describe(), src.byteSize, srcOffset, bytes);
        checkRange(describe(), byteSize, dstOffset, bytes);
        src.checkOpen();
        checkOpen();
    }

    /** Asynchronous device-to-device copy on {@code stream}. */
    public void copyFromAsync(DeviceBuffer src, long srcOffset, long dstOffset, long bytes, CudaStream stream) {
        checkRange(src.describe(), src.byteSize, srcOffset, bytes);
        checkRange(describe(), byteSize, dstOffset, bytes);
        src.checkOpen();
        stream.checkOpen();
        checkOpen();
        if (bytes > 0) {
            InjectedFaults.before("cuMemcpyDtoDAsync_v2");
            Driver.check(cuMemcpyDtoDAsync_v2(address + dstOffset, src.address + srcOffset, bytes, stream.handle()),
                    "cuMemcpyDtoDAsync_v2");
        }
    }

    /** Asynchronous host-to-device copy on {@code stream}; {@code src} must stay alive until the stream passes it. */
    public void copyFromAsync(PinnedHostBuffer src, long srcOffset, long dstOffset, long bytes, CudaStream stream) {
        checkRange(src.describe(), src.byteSize(), srcOffset, bytes);
        checkRange(describe(), byteSize, dstOffset, bytes);
        src.checkOpen();
        stream.checkOpen();
        checkOpen();
        if (bytes > 0) {
            InjectedFaults.before("cuMemcpyHtoDAsync_v2");
            Driver.check(cuMemcpyHtoDAsync_v2(address + dstOffset, src.segment().asSlice(srcOffset, bytes), bytes,
                    stream.handle()), "cuMemcpyHtoDAsync_v2");
        }
    }

    /** Asynchronous device-to-host copy on {@code stream}. */
    public void copyToAsync(long srcOffset, PinnedHostBuffer dst, long dstOffset, long bytes, CudaStream stream) {
        checkRange(describe(), byteSize, srcOffset, bytes);
        checkRange(dst.describe(), dst.byteSize(), dstOffset, bytes);
        dst.checkOpen();
        stream.checkOpen();
        checkOpen();
        if (bytes > 0) {
            InjectedFaults.before("cuMemcpyDtoHAsync_v2");
            Driver.check(cuMemcpyDtoHAsync_v2(dst.segment().asSlice(dstOffset, bytes), address + srcOffset, bytes,
                    stream.handle()), "cuMemcpyDtoHAsync_v2");
        }
    }

    /** Sets {@code bytes} bytes from {@code offset} to {@code value}. */
    public void fill(byte value, long offset, long bytes) {
        checkRange(describe(), byteSize, offset, bytes);
        checkOpen();
        if (bytes > 0) {
            InjectedFaults.before("cuMemsetD8_v2");
            Driver.check(cuMemsetD8_v2(address + offset, value, bytes), "cuMemsetD8_v2");
            finishLegacyStream("cuMemsetD8_v2");
        }
    }

    public void fill(byte value) {
        fill(value, 0, byteSize);
    }

    /** Asynchronous {@link #fill(byte, long, long)} on {@code stream}, ordered with the stream's kernels. */
    public void fillAsync(byte value, long offset, long bytes, CudaStream stream) {
        checkRange(describe(), byteSize, offset, bytes);
        stream.checkOpen();
        checkOpen();
        if (bytes > 0) {
            InjectedFaults.before("cuMemsetD8Async");
            Driver.check(cuMemsetD8Async(address + offset, value, bytes, stream.handle()), "cuMemsetD8Async");
        }
    }

    /** Sets {@code count} 32-bit words from byte {@code offset} (4-aligned) to {@code bits}, e.g. a NaN pattern. */
    public void fill32(int bits, long offset, long count) {
        if ((offset & 3) != 0) {
            throw new IllegalArgumentException("fill32 offset " + offset + " is not 4-byte aligned");
        }
        if (count < 0 || count > Long.MAX_VALUE / 4) {
            throw new IllegalArgumentException("fill32 count " + count + " is invalid");
        }
        checkRange(describe(), byteSize, offset, count * 4);
        checkOpen();
        if (count > 0) {
            InjectedFaults.before("cuMemsetD32_v2");
            Driver.check(cuMemsetD32_v2(address + offset, bits, count), "cuMemsetD32_v2");
            finishLegacyStream("cuMemsetD32_v2");
        }
    }

    /**
     * The synchronous methods run on the legacy default stream, which the project's non-blocking streams do not wait
     * for, and the driver may return before a memset, a device-to-device copy or the DMA of a pageable upload is
     * done. Waiting here makes them complete on return, so a kernel queued next on any stream sees their bytes.
     */
    private static void finishLegacyStream(String after) {
        Driver.check(cuStreamSynchronize(MemorySegment.NULL), "cuStreamSynchronize(legacy stream) after " + after);
    }

    @Override
    public String describe() {
        return "device buffer of " + byteSize + " bytes at 0x" + Long.toHexString(address);
    }

    @Override
    void release() {
        Driver.check(cuMemFree_v2(address), "cuMemFree_v2");
    }

    static void checkRange(String what, long size, long offset, long bytes) {
        if (offset < 0 || bytes < 0 || offset > size || bytes > size - offset) {
            throw new IndexOutOfBoundsException("range [" + offset + ", " + offset + " + " + bytes + ") is outside "
                    + what + " of " + size + " bytes");
        }
    }

    private interface NativeAction {
        void run(MemorySegment nativeSegment);
    }

    /** Heap segments cannot be handed to the driver: stage them through a temporary native copy. */
    private static void withNative(MemorySegment src, long offset, long bytes, boolean copyIn, NativeAction action) {
        if (src.isNative()) {
            action.run(src.asSlice(offset, bytes));
            return;
        }
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment staging = arena.allocate(bytes, 16);
            if (copyIn) {
                MemorySegment.copy(src, offset, staging, 0, bytes);
            }
            action.run(staging);
        }
    }
}
