package dev.calibquant.gpu;

import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.cuda.PinnedHostBuffer;

/** Grow-only scratch buffers that an owner reuses across calls (uploads, index tables); freed on close. */
final class Staging implements AutoCloseable {
    private final CudaContext context;
    private DeviceBuffer kin;
    private DeviceBuffer vin;
    private DeviceBuffer deviceTable;
    private PinnedHostBuffer table;

    Staging(CudaContext context) {
        this.context = context;
    }

    private DeviceBuffer grow(DeviceBuffer current, long bytes) {
        if (current != null && current.byteSize() >= bytes) {
            return current;
        }
        if (current != null) {
            current.close();
        }
        return context.allocate(Math.max(bytes, 4096));
    }

    DeviceBuffer kin(long bytes) {
        return kin = grow(kin, bytes);
    }

    DeviceBuffer vin(long bytes) {
        return vin = grow(vin, bytes);
    }

    DeviceBuffer deviceTable(long bytes) {
        return deviceTable = grow(deviceTable, bytes);
    }

    PinnedHostBuffer table(long bytes) {
        if (table == null || table.byteSize() < bytes) {
            if (table != null) {
                table.close();
            }
            table = context.allocatePinned(Math.max(bytes, 4096));
        }
        return table;
    }

    @Override
    public void close() {
        for (AutoCloseable c : new AutoCloseable[] {kin, vin, deviceTable, table}) {
            if (c != null) {
                try {
                    c.close();
                } catch (Exception e) {
                    throw e instanceof RuntimeException r ? r : new IllegalStateException(e);
                }
            }
        }
    }
}
