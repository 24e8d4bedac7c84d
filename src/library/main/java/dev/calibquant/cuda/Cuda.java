package dev.calibquant.cuda;

import static dev.calibquant.cuda.bindings.CudaDriver.C_INT;

import dev.calibquant.cuda.bindings.CudaDriver;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * Entry point of the CUDA layer: the driver is probed once, lazily; a machine without a usable GPU gets a stored
 * reason instead of an exception from the probe.
 */
public final class Cuda {

    /** Oldest driver generation that loads the shipped PTX (ISA 8.7 from Triton 3.6 needs CUDA 12.8). */
    public static final int MIN_DRIVER_VERSION = 12080;

    private static volatile CudaAvailability availability;

    private Cuda() {}

    public static CudaAvailability availability() {
        CudaAvailability a = availability;
        if (a == null) {
            synchronized (Cuda.class) {
                if (availability == null) {
                    availability = probe();
                }
                a = availability;
            }
        }
        return a;
    }

    public static boolean isAvailable() {
        return availability().available();
    }

    /** Throws {@link CudaUnavailableException} with the probe's reason where the GPU path cannot run. */
    public static void requireAvailable() {
        CudaAvailability a = availability();
        if (!a.available()) {
            throw new CudaUnavailableException(a.reason());
        }
    }

    public static int deviceCount() {
        return availability().deviceCount();
    }

    public static CudaDevice device(int ordinal) {
        requireAvailable();
        int count = deviceCount();
        if (ordinal < 0 || ordinal >= count) {
            throw new IllegalArgumentException("device " + ordinal + " does not exist: this machine has " + count + " CUDA device(s)");
        }
        return new CudaDevice(Driver.readInt("cuDeviceGet", p -> CudaDriver.cuDeviceGet(p, ordinal)));
    }

    private static CudaAvailability probe() {
        int driverVersion = 0;
        try {
            int init = CudaDriver.cuInit(0);
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment v = arena.allocate(C_INT);
                if (CudaDriver.cuDriverGetVersion(v) == Driver.CUDA_SUCCESS) {
                    driverVersion = v.get(C_INT, 0);
                }
            }
            if (init == Driver.CUDA_ERROR_NO_DEVICE) {
                return new CudaAvailability(false, "the NVIDIA driver found no CUDA device (cuInit: CUDA_ERROR_NO_DEVICE)",
                        driverVersion, 0);
            }
            if (init != Driver.CUDA_SUCCESS) {
                return new CudaAvailability(false, "the NVIDIA driver failed to initialize: cuInit returned "
                        + Driver.errorName(init) + " (" + Driver.errorString(init) + ")", driverVersion, 0);
            }
            if (driverVersion < MIN_DRIVER_VERSION) {
                return new CudaAvailability(false, "the NVIDIA driver supports CUDA " + Driver.versionText(driverVersion)
                        + "; the shipped kernels (PTX ISA 8.7) need a driver of CUDA " + Driver.versionText(MIN_DRIVER_VERSION)
                        + " or newer (R570+)", driverVersion, 0);
            }
            int count = Driver.readInt("cuDeviceGetCount", CudaDriver::cuDeviceGetCount);
            if (count == 0) {
                return new CudaAvailability(false, "the NVIDIA driver reports no CUDA device", driverVersion, 0);
            }
            return new CudaAvailability(true, "CUDA driver " + Driver.versionText(driverVersion) + ", " + count + " device(s)",
                    driverVersion, count);
        } catch (ExceptionInInitializerError | NoClassDefFoundError e) {
            Throwable cause = e.getCause() != null ? e.getCause() : e;
            return new CudaAvailability(false, "no NVIDIA driver: libcuda.so.1 cannot be loaded ("
                    + cause.getMessage() + ")", 0, 0);
        } catch (UnsatisfiedLinkError e) {
            return new CudaAvailability(false, "the NVIDIA driver's libcuda.so.1 lacks a function this library needs ("
                    + e.getMessage() + "); a driver of CUDA " + Driver.versionText(MIN_DRIVER_VERSION) + " or newer is required",
                    driverVersion, 0);
        } catch (IllegalCallerException e) {
            return new CudaAvailability(false, "native access is disabled for this code: run java with "
                    + "--enable-native-access=ALL-UNNAMED (" + e.getMessage() + ")", 0, 0);
        } catch (RuntimeException e) {
            return new CudaAvailability(false, "the CUDA driver probe failed: " + e, driverVersion, 0);
        }
    }
}
