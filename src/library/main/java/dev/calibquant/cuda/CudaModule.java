package dev.calibquant.cuda;

import static dev.calibquant.cuda.bindings.CudaDriver.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A module on the context's device: PTX JIT-compiled by the driver, or a cubin loaded as is. Its functions live as
 * long as it does.
 */
public final class CudaModule extends NativeResource {
    private static final int LOG_BYTES = 16 * 1024;
    private static final Pattern PTX_VERSION = Pattern.compile("^\\s*\\.version\\s+(\\d+)\\.(\\d+)", Pattern.MULTILINE);

    private final String name;
    private final MemorySegment handle;
    private final String jitInfoLog;
    private final Map<String, CudaFunction> functions = new ConcurrentHashMap<>();

    private CudaModule(CudaContext owner, String name, MemorySegment handle, String jitInfoLog) {
        super(owner);
        this.name = name;
        this.handle = handle;
        this.jitInfoLog = jitInfoLog;
    }

    static CudaModule load(CudaContext owner, String name, String ptx) {
        return load(owner, name, ptx.getBytes(StandardCharsets.UTF_8), true, ptxIsaVersion(ptx));
    }

    /** A cubin (an ELF image for exactly this device's architecture): loaded as is, no JIT. */
    static CudaModule loadCubin(CudaContext owner, String name, byte[] cubin) {
        return load(owner, name, cubin, false, 0);
    }

    private static CudaModule load(CudaContext owner, String name, byte[] bytes, boolean text, int ptxIsa) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment errorLog = arena.allocate(LOG_BYTES);
            MemorySegment infoLog = arena.allocate(LOG_BYTES);
            int[] keys = {CU_JIT_ERROR_LOG_BUFFER(), CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES(),
                CU_JIT_INFO_LOG_BUFFER(), CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES()};
            MemorySegment options = arena.allocateFrom(ValueLayout.JAVA_INT, keys);
            MemorySegment values = arena.allocate(C_POINTER, keys.length);
            values.setAtIndex(C_POINTER, 0, errorLog);
            values.setAtIndex(C_POINTER, 1, MemorySegment.ofAddress(LOG_BYTES));
            values.setAtIndex(C_POINTER, 2, infoLog);
            values.setAtIndex(C_POINTER, 3, MemorySegment.ofAddress(LOG_BYTES));
            // PTX is text the driver reads up to its NUL; a cubin is an ELF image it reads by its own headers
            MemorySegment image = arena.allocate(bytes.length + (text ? 1 : 0), 16);
            MemorySegment.copy(bytes, 0, image, ValueLayout.JAVA_BYTE, 0, bytes.length);
            MemorySegment out = arena.allocate(C_POINTER);
            int rc = cuModuleLoadDataEx(out, image, keys.length, options, values);
            if (rc != Driver.CUDA_SUCCESS) {
                String log = errorLog.getString(0);
                String call = "cuModuleLoadDataEx(" + name + ")";
                String message = call + " failed: " + Driver.errorName(rc) + " (" + rc + "): " + Driver.errorString(rc);
                if (rc == Driver.CUDA_ERROR_UNSUPPORTED_PTX_VERSION && ptxIsa > 0) {
                    message += ". The PTX is ISA " + ptxIsa / 10 + "." + ptxIsa % 10 + ", which needs an NVIDIA driver of CUDA "
                            + Driver.versionText(Driver.cudaVersionForPtx(ptxIsa)) + " or newer; this driver is CUDA "
                            + Cuda.availability().driverVersionText() + ". Update the driver.";
                }
                throw new PtxLoadException(call, rc, Driver.errorName(rc), message, log);
            }
            return new CudaModule(owner, name, out.get(C_POINTER, 0), infoLog.getString(0));
        }
    }

    /** The PTX ISA version from the text's {@code .version} line as major * 10 + minor, or 0 if there is none. */
    static int ptxIsaVersion(String ptx) {
        Matcher m = PTX_VERSION.matcher(ptx);
        return m.find() ? Integer.parseInt(m.group(1)) * 10 + Integer.parseInt(m.group(2)) : 0;
    }

    public String name() {
        return name;
    }

    /** What the JIT compiler reported while loading (often empty). */
    public String jitInfoLog() {
        return jitInfoLog;
    }

    /** The kernel {@code entry} of this module; fails with the driver's error if there is no such entry. */
    public CudaFunction function(String entry) {
        checkOpen();
        return functions.computeIfAbsent(entry, e -> {
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment out = arena.allocate(C_POINTER);
                Driver.check(cuModuleGetFunction(out, handle, arena.allocateFrom(e)),
                        "cuModuleGetFunction(" + name + ", " + e + ")");
                return new CudaFunction(this, e, out.get(C_POINTER, 0));
            }
        });
    }

    @Override
    public String describe() {
        return "CUDA module " + name;
    }

    @Override
    void release() {
        Driver.check(cuModuleUnload(handle), "cuModuleUnload(" + name + ")");
    }
}
