package dev.calibquant.cuda;

/** What {@code calibquant info} prints about a GPU, and what kernel selection and launch checks need. */
public record DeviceProperties(
        int ordinal,
        String name,
        int computeMajor,
        int computeMinor,
        int multiprocessors,
        long totalMemoryBytes,
        int maxThreadsPerBlock,
        int maxSharedMemoryPerBlock,
        int maxSharedMemoryPerBlockOptin,
        int warpSize,
        int l2CacheBytes,
        int memoryClockKhz,
        int memoryBusWidthBits,
        String pciBusId) {

    public int computeCapability() {
        return computeMajor * 10 + computeMinor;
    }

    /** Theoretical DRAM bandwidth: 2 transfers per clock (DDR) × bus width. */
    public double peakMemoryBandwidthGBs() {
        return 2.0 * memoryClockKhz * 1e3 * (memoryBusWidthBits / 8.0) / 1e9;
    }
}
