package dev.calibquant.kernels;

import dev.calibquant.cuda.CudaContext;
import dev.calibquant.cuda.CudaFunction;
import dev.calibquant.cuda.CudaModule;
import dev.calibquant.cuda.CudaStream;
import dev.calibquant.cuda.DeviceBuffer;
import dev.calibquant.cuda.LaunchArgs;
import dev.calibquant.profiling.Nvtx;
import java.util.List;

/**
 * One loaded kernel variant with its manifest facts. Arguments are given in manifest order through {@link #args()};
 * a wrong count or type is rejected here, and Triton's two trailing scratch pointers are added by {@link Call#launch}.
 */
public final class Kernel implements AutoCloseable {
    private final KernelManifest.Kernel spec;
    private final KernelManifest.Target target;
    private final CudaContext context;
    private final CudaModule module;
    private final CudaFunction function;
    private final List<ArgType> types;
    private final Nvtx.Name nvtxName;
    private DeviceBuffer globalScratch;

    Kernel(CudaContext context, KernelManifest.Kernel spec, KernelManifest.Target target, CudaModule module,
            CudaFunction function) {
        this.context = context;
        this.spec = spec;
        this.target = target;
        this.module = module;
        this.function = function;
        this.types = spec.argTypes();
        this.nvtxName = Nvtx.rangeName(spec.name());
    }

    public String name() {
        return spec.name();
    }

    public KernelManifest.Kernel spec() {
        return spec;
    }

    /** An integer constexpr the variant was compiled with (e.g. {@code BN}); fails if it has none of that name. */
    public int constexpr(String name) {
        Object v = spec.constexprs().get(name);
        if (!(v instanceof Number n)) {
            throw new KernelManifestException("kernel " + name() + " has no integer constexpr " + name);
        }
        return n.intValue();
    }

    public KernelManifest.Target target() {
        return target;
    }

    public CudaFunction function() {
        return function;
    }

    /** Programs of this variant the whole GPU holds at once (occupancy per SM times SMs). */
    public int residentPrograms() {
        return function.maxActiveBlocksPerMultiprocessor(target.threadsPerBlock(), target.sharedBytes())
                * context.device().properties().multiprocessors();
    }

    /** Starts an argument list for one launch. */
    public Call args() {
        return new Call();
    }

    /** The arguments of one launch, checked one by one against the manifest's types. */
    public final class Call {
        private final LaunchArgs values = new LaunchArgs();

        private ArgType next(String what) {
            int i = values.size();
            if (i >= types.size()) {
                throw new IllegalArgumentException(name() + ": too many arguments; it takes " + types.size() + " "
                        + describeArgs());
            }
            return types.get(i);
        }

        private IllegalArgumentException mismatch(ArgType expected, String given) {
            int i = values.size();
            return new IllegalArgumentException(name() + ": argument " + i + " (" + spec.args().get(i).name() + ") is "
                    + expected.tritonName() + ", given " + given);
        }

        /** A pointer argument: byte {@code offset} of {@code buffer} (checked against its size). */
        public Call pointer(DeviceBuffer buffer, long offset) {
            ArgType t = next("pointer");
            if (!t.isPointer()) {
                throw mismatch(t, "a pointer");
            }
            values.pointer(buffer.address(offset));
            return this;
        }

        public Call pointer(DeviceBuffer buffer) {
            return pointer(buffer, 0);
        }

        public Call i32(int value) {
            ArgType t = next("i32");
            if (t != ArgType.I32) {
                throw mismatch(t, "i32 " + value);
            }
            values.i32(value);
            return this;
        }

        public Call i64(long value) {
            ArgType t = next("i64");
            if (t != ArgType.I64) {
                throw mismatch(t, "i64 " + value);
            }
            values.i64(value);
            return this;
        }

        public Call f32(float value) {
            ArgType t = next("fp32");
            if (t != ArgType.FP32) {
                throw mismatch(t, "fp32 " + value);
            }
            if (!Float.isFinite(value)) {
                throw new IllegalArgumentException(name() + ": argument " + values.size() + " ("
                        + spec.args().get(values.size()).name() + ") is not finite: " + value);
            }
            values.f32(value);
            return this;
        }

        /** Launches a grid of {@code (gx, gy, gz)} programs with the manifest's warps and shared memory. */
        @SuppressWarnings("try") // an NVTX range opened for its scope, never read
        public void launch(int gx, int gy, int gz, CudaStream stream) {
            if (values.size() != types.size()) {
                throw new IllegalArgumentException(name() + ": " + values.size() + " arguments given, it takes "
                        + types.size() + " " + describeArgs());
            }
            long programs = (long) gx * gy * gz;
            values.pointer(scratchAddress(programs));
            values.pointer(0L); // profile scratch: instrumentation is off in shipped kernels
            try (Nvtx.Range r = Nvtx.range(nvtxName)) { // so `ncu --nvtx-include` can pick one variant
                function.launch(gx, gy, gz, target.threadsPerBlock(), target.sharedBytes(), stream, values);
            }
        }
    }

    private String describeArgs() {
        return spec.args().stream().map(a -> a.type() + " " + a.name()).toList().toString();
    }

    /** Triton sizes global scratch per program; none of our kernels asks for any today, but honour it if one does. */
    private synchronized long scratchAddress(long programs) {
        long perProgram = target.globalScratchSize();
        if (perProgram == 0) {
            return 0L;
        }
        long bytes = Math.multiplyExact(perProgram, programs);
        if (globalScratch == null || globalScratch.byteSize() < bytes) {
            if (globalScratch != null) {
                globalScratch.close();
            }
            globalScratch = null;
            globalScratch = context.allocate(bytes);
        }
        return globalScratch.address();
    }

    @Override
    public synchronized void close() {
        if (globalScratch != null) {
            globalScratch.close();
            globalScratch = null;
        }
        module.close();
    }
}
