package dev.calibquant.profiling;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * Finds and binds the CUDA toolkit's {@code libnvtx3interop.so.1}, which exports the NVTX v3 C API (the header-only
 * NVTX cannot be called from Java). Looked for, in order: the explicit path ({@code -Dcalibquant.nvtx.library} or
 * {@code CALIBQUANT_NVTX_LIBRARY}; when given, nothing else is tried), {@code $CUDA_HOME/lib64},
 * {@code $CUDA_PATH/lib64}, {@code /usr/local/cuda/lib64}, then the plain soname through the system loader.
 */
final class NvtxLibrary {
    static final String SONAME = "libnvtx3interop.so.1";

    /** The API bound to a found library, and where it was found. */
    record Bound(NvtxApi api, String where) {}

    private NvtxLibrary() {}

    /** The files to try, in order; {@code null} stands for the soname through the system loader. */
    static List<Path> candidates(String explicit, Map<String, String> env) {
        List<Path> paths = new ArrayList<>();
        if (explicit != null && !explicit.isBlank()) {
            paths.add(Path.of(explicit));
            return paths;
        }
        for (String var : new String[] {"CUDA_HOME", "CUDA_PATH"}) {
            String dir = env.get(var);
            if (dir != null && !dir.isBlank()) {
                paths.add(Path.of(dir, "lib64", SONAME));
            }
        }
        paths.add(Path.of("/usr/local/cuda/lib64", SONAME));
        paths.add(null);
        return paths;
    }

    /**
     * Binds the first candidate that loads and exports the four calls; throws {@link IllegalStateException} naming
     * every place tried and why each failed. A bound library stays loaded for the life of the process (global arena):
     * a downcall to a symbol of a closable arena takes an atomic acquire and release of that arena each time, which
     * would triple the cost of a range.
     */
    static Bound bind(String explicit, Map<String, String> env) {
        Arena arena = Arena.global();
        List<String> tried = new ArrayList<>();
        for (Path p : candidates(explicit, env)) {
            String where = p == null ? SONAME + " (system loader)" : p.toString();
            SymbolLookup lookup;
            try {
                if (p != null && !Files.isRegularFile(p)) {
                    tried.add(where + ": no such file");
                    continue;
                }
                lookup = p == null ? SymbolLookup.libraryLookup(SONAME, arena) : SymbolLookup.libraryLookup(p, arena);
            } catch (IllegalArgumentException e) {
                tried.add(where + ": cannot be loaded (" + e.getMessage() + ")");
                continue;
            }
            try {
                return new Bound(new FfmNvtxApi(lookup), where);
            } catch (IllegalStateException e) {
                tried.add(where + ": " + e.getMessage());
            }
        }
        throw new IllegalStateException(SONAME + " not usable; tried " + String.join("; ", tried));
    }

    /**
     * The NVTX domain calls through FFM downcalls (no JNI). A record, so that HotSpot trusts its final fields: held in
     * a static final, its method handles fold to constants and each call compiles to a direct downcall.
     */
    private record FfmNvtxApi(MethodHandle createDomainHandle, MethodHandle destroyDomainHandle, MethodHandle pushHandle,
            MethodHandle popHandle) implements NvtxApi {

        FfmNvtxApi(SymbolLookup lookup) {
            this(Linker.nativeLinker().downcallHandle(find(lookup, "nvtxDomainCreateA"),
                            FunctionDescriptor.of(ValueLayout.ADDRESS, ValueLayout.ADDRESS)),
                    Linker.nativeLinker().downcallHandle(find(lookup, "nvtxDomainDestroy"),
                            FunctionDescriptor.ofVoid(ValueLayout.ADDRESS)),
                    Linker.nativeLinker().downcallHandle(find(lookup, "nvtxDomainRangePushEx"),
                            FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.ADDRESS, ValueLayout.ADDRESS)),
                    Linker.nativeLinker().downcallHandle(find(lookup, "nvtxDomainRangePop"),
                            FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.ADDRESS)));
        }

        private static MemorySegment find(SymbolLookup lookup, String symbol) {
            return lookup.find(symbol).orElseThrow(() -> new IllegalStateException("does not export " + symbol));
        }

        @Override
        public MemorySegment createDomain(MemorySegment name) {
            try {
                return (MemorySegment) createDomainHandle.invokeExact(name);
            } catch (Throwable t) {
                throw rethrow(t);
            }
        }

        @Override
        public void destroyDomain(MemorySegment domain) {
            try {
                destroyDomainHandle.invokeExact(domain);
            } catch (Throwable t) {
                throw rethrow(t);
            }
        }

        @Override
        public int push(MemorySegment domain, MemorySegment eventAttributes) {
            try {
                return (int) pushHandle.invokeExact(domain, eventAttributes);
            } catch (Throwable t) {
                throw rethrow(t);
            }
        }

        @Override
        public int pop(MemorySegment domain) {
            try {
                return (int) popHandle.invokeExact(domain);
            } catch (Throwable t) {
                throw rethrow(t);
            }
        }

        private static RuntimeException rethrow(Throwable t) {
            if (t instanceof RuntimeException r) {
                throw r;
            }
            if (t instanceof Error e) {
                throw e;
            }
            return new IllegalStateException("NVTX downcall failed", t);
        }
    }
}
