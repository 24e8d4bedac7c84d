package dev.calibquant.cuda;

/**
 * Whether the GPU path can run here. Never throws to find out: {@link #reason()} says why not, in words a user can
 * act on (no {@code libcuda.so.1}, no device, driver too old, ...).
 *
 * @param driverVersion as {@code cuDriverGetVersion} reports it (13000 = CUDA 13.0), 0 when unknown
 */
public record CudaAvailability(boolean available, String reason, int driverVersion, int deviceCount) {

    public String driverVersionText() {
        return driverVersion == 0 ? "unknown" : Driver.versionText(driverVersion);
    }
}
