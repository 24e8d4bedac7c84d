package dev.calibquant.gpu;

/**
 * A {@link DeviceKvCache} has no free range for a block: its device memory, reserved when it was opened, is used up
 * (or too fragmented for the size asked). The {@link dev.calibquant.cache.KvStorage} contract names
 * {@link OutOfMemoryError} for this; the cache manager then releases what it reserved and leaves the sequence as it
 * was. Nothing was allocated.
 */
public final class DeviceOutOfMemoryError extends OutOfMemoryError {

    private final long requestedBytes;

    public DeviceOutOfMemoryError(String what, long requestedBytes, long usedBytes, long capacityBytes,
            long largestFreeBytes) {
        super(what + " needs a range of " + requestedBytes + " bytes of the device storage's planes, which have "
                + (capacityBytes - usedBytes) + " of their " + capacityBytes + " bytes free, the largest free range "
                + largestFreeBytes + " bytes");
        this.requestedBytes = requestedBytes;
    }

    public long requestedBytes() {
        return requestedBytes;
    }
}
