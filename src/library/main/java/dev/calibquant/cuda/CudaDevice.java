package dev.calibquant.cuda;

import static dev.calibquant.cuda.bindings.CudaDriver.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/** One CUDA device (a {@code CUdevice} ordinal); holds no native resource. */
public final class CudaDevice {
    private final int handle;

    CudaDevice(int handle) {
        this.handle = handle;
    }

    int handle() {
        return handle;
    }

    public int attribute(int attribute) {
        return Driver.readInt("cuDeviceGetAttribute", p -> cuDeviceGetAttribute(p, attribute, handle));
    }

    public String name() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment buf = arena.allocate(256);
            Driver.check(cuDeviceGetName(buf, 256, handle), "cuDeviceGetName");
            return buf.getString(0);
        }
    }

    public long totalMemory() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(C_LONG_LONG);
            Driver.check(cuDeviceTotalMem_v2(out, handle), "cuDeviceTotalMem_v2");
            return out.get(C_LONG_LONG, 0);
        }
    }

    public DeviceProperties properties() {
        String pci = String.format("%04x:%02x:%02x.0", attribute(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID()),
                attribute(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID()), attribute(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID()));
        return new DeviceProperties(handle, name(),
                attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR()),
                attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR()),
                attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT()),
                totalMemory(),
                attribute(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK()),
                attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK()),
                attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN()),
                attribute(CU_DEVICE_ATTRIBUTE_WARP_SIZE()),
                attribute(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE()),
                attribute(CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE()),
                attribute(CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH()),
                pci);
    }

    /** Retains this device's primary context; the returned owner releases it, and everything made in it, on close. */
    public CudaContext openContext() {
        return CudaContext.retainPrimary(this);
    }
}
