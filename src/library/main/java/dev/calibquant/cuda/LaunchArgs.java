package dev.calibquant.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;

/**
 * The values of one kernel launch, each at its exact width (pointers and 64-bit integers take 8 bytes, i32 and fp32
 * take 4), turned into the {@code void**} array {@code cuLaunchKernel} reads. The {@code kernels} package builds
 * these from a manifest's typed argument list; nothing else should.
 */
public final class LaunchArgs {
    private final List<Object> values = new ArrayList<>();

    /** An empty argument list, filled in kernel-parameter order. */
    public LaunchArgs() {
    }

    public LaunchArgs pointer(long deviceAddress) {
        values.add(deviceAddress);
        return this;
    }

    public LaunchArgs i64(long value) {
        values.add(value);
        return this;
    }

    public LaunchArgs i32(int value) {
        values.add(value);
        return this;
    }

    public LaunchArgs f32(float value) {
        values.add(value);
        return this;
    }

    public int size() {
        return values.size();
    }

    MemorySegment toKernelParams(Arena arena) {
        MemorySegment pointers = arena.allocate(ValueLayout.ADDRESS, Math.max(1, values.size()));
        for (int i = 0; i < values.size(); i++) {
            MemorySegment slot = switch (values.get(i)) {
                case Long l -> arena.allocateFrom(ValueLayout.JAVA_LONG, l);
                case Integer n -> arena.allocateFrom(ValueLayout.JAVA_INT, n);
                case Float f -> arena.allocateFrom(ValueLayout.JAVA_FLOAT, f);
                default -> throw new IllegalStateException("unexpected launch value " + values.get(i));
            };
            pointers.setAtIndex(ValueLayout.ADDRESS, i, slot);
        }
        return pointers;
    }
}
