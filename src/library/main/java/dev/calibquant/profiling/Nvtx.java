package dev.calibquant.profiling;

import java.lang.foreign.Arena;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.lang.foreign.ValueLayout;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.ConcurrentHashMap;

/**
 * NVTX ranges from Java, through FFM: they name what runs in Nsight Systems' timeline and let Nsight Compute pick
 * kernels by phase, e.g. {@code ncu --nvtx --nvtx-include "calibquant@decode_step/"}. All ranges are push/pop ranges
 * of the NVTX domain {@value #DOMAIN}, on the thread that does the work:
 * <ul>
 *   <li>{@value #PREFILL}: the end of prefill of one layer (the device storage's {@code storePrefill}: upload, copies, quantize_pack);
 *   <li>{@value #DECODE_STEP}: one decode step's launches ({@code DeviceDecodeAttention}'s decode and prepared-step launch);
 *   <li>each kernel launch, named by its manifest variant (e.g. {@code calibquant_decode_b1_d128_mm2}).
 * </ul>
 *
 * <p>Off unless a profiler is attached (Nsight Systems and Nsight Compute set {@code NVTX_INJECTION64_PATH} in the
 * process they start) or {@code -Dcalibquant.nvtx=true} (the CLI's {@code --nvtx}); {@code -Dcalibquant.nvtx=false}
 * keeps it off. The decision is taken once per process. While off, {@link #range} tests a static final constant and
 * returns a shared no-op range: nothing is allocated and nothing native is touched. While on, a range is one downcall
 * to {@code nvtxDomainRangePushEx} and one to {@code nvtxDomainRangePop}, with each name's C string and event
 * attributes built once. Where {@code libnvtx3interop.so.1} cannot be found, ranges stay no-ops and
 * {@link #status()} says why.
 *
 * <p>Use {@code try (Nvtx.Range r = Nvtx.range(name)) { ... }} so the pop happens even when the body throws.
 */
public final class Nvtx implements AutoCloseable {
    public static final String DOMAIN = "calibquant";
    public static final String PREFILL = "prefill";
    public static final String DECODE_STEP = "decode_step";

    /** System property (and, upper-cased with underscores, environment variable) of the library's path. */
    public static final String LIBRARY_PROPERTY = "calibquant.nvtx.library";
    public static final String LIBRARY_ENV = "CALIBQUANT_NVTX_LIBRARY";
    public static final String SWITCH_PROPERTY = "calibquant.nvtx";
    /** Set by the Nsight tools in the processes they profile: the NVTX library loads their injection from it. */
    public static final String INJECTION_ENV = "NVTX_INJECTION64_PATH";

    /** {@code nvtxEventAttributes_t} of NVTX v3 ({@code nvToolsExt.h}), 48 bytes on 64-bit Linux. */
    static final StructLayout EVENT_ATTRIBUTES = MemoryLayout.structLayout(
            ValueLayout.JAVA_SHORT.withName("version"),
            ValueLayout.JAVA_SHORT.withName("size"),
            ValueLayout.JAVA_INT.withName("category"),
            ValueLayout.JAVA_INT.withName("colorType"),
            ValueLayout.JAVA_INT.withName("color"),
            ValueLayout.JAVA_INT.withName("payloadType"),
            ValueLayout.JAVA_INT.withName("reserved0"),
            ValueLayout.JAVA_LONG.withName("payload"),
            ValueLayout.JAVA_INT.withName("messageType"),
            MemoryLayout.paddingLayout(4),
            ValueLayout.ADDRESS.withName("message"));
    private static final short NVTX_VERSION = 3;
    private static final int NVTX_COLOR_ARGB = 1;
    private static final int NVTX_MESSAGE_TYPE_ASCII = 1;

    /** A range to close; closing pops it. */
    public interface Range extends AutoCloseable {
        @Override
        void close();
    }

    /** What {@link #range} returns while off: shared, closing it does nothing. */
    static final Range NO_RANGE = () -> {};

    /** A range name with its C string and event attributes, built once by the {@link Nvtx} that owns it. */
    public static final class Name {
        static final Name NONE = new Name(null, "(nvtx off)", MemorySegment.NULL);

        private final Nvtx owner;
        private final String text;
        /**
         * The attributes' address, as a segment of the global scope: a downcall with a segment of the owner's shared
         * arena would take an atomic acquire and release of that arena each time (measured: 4× the cost of the two
         * calls). The owner keeps the memory until {@link Nvtx#close}, after which it pushes nothing.
         */
        private final MemorySegment attributes;

        private Name(Nvtx owner, String text, MemorySegment attributes) {
            this.owner = owner;
            this.text = text;
            this.attributes = MemorySegment.ofAddress(attributes.address());
        }

        public String text() {
            return text;
        }

        @Override
        public String toString() {
            return text;
        }
    }

    /** Whether ranges are wanted, and why; read once per process from the system properties and environment. */
    record Settings(boolean wanted, String why, String explicitLibrary) {
        static Settings of(String switchProperty, String injectionPath, String explicitLibrary) {
            if ("false".equalsIgnoreCase(switchProperty)) {
                return new Settings(false, "-D" + SWITCH_PROPERTY + "=false", explicitLibrary);
            }
            if ("true".equalsIgnoreCase(switchProperty)) {
                return new Settings(true, "-D" + SWITCH_PROPERTY + "=true", explicitLibrary);
            }
            if (injectionPath != null && !injectionPath.isBlank()) {
                return new Settings(true, "a profiler is attached (" + INJECTION_ENV + " is set)", explicitLibrary);
            }
            return new Settings(false, "no profiler attached and -D" + SWITCH_PROPERTY + " not set", explicitLibrary);
        }

        static Settings fromSystem() {
            String library = System.getProperty(LIBRARY_PROPERTY);
            if (library == null) {
                library = System.getenv(LIBRARY_ENV);
            }
            return of(System.getProperty(SWITCH_PROPERTY), System.getenv(INJECTION_ENV), library);
        }
    }

    private static final Nvtx PROCESS = open(Settings.fromSystem(), System.getenv());
    /** The constant the disabled path tests: the JIT folds {@link #range} to nothing while it is false. */
    private static final boolean ON = PROCESS.enabled();
    // The enabled path through static finals too: constants to the JIT, so a range is two direct downcalls.
    private static final NvtxApi API = PROCESS.api;
    private static final MemorySegment DOMAIN_HANDLE = PROCESS.domain;
    private static final Range POP = () -> API.pop(DOMAIN_HANDLE);

    private final boolean enabled;
    private final String status;
    private final NvtxApi api;
    private final Arena arena;
    private final MemorySegment domain;
    private final Map<String, Name> names = new ConcurrentHashMap<>();
    private final Range pop;
    private volatile boolean closed;

    private Nvtx(String status, NvtxApi api, Arena arena) {
        this.enabled = api != null;
        this.status = status;
        this.api = api;
        this.arena = arena;
        this.domain = api == null ? MemorySegment.NULL : api.createDomain(arena.allocateFrom(DOMAIN));
        this.pop = api == null ? NO_RANGE : () -> api.pop(domain);
    }

    /** Ranges as {@code settings} ask, the library found through {@code env} (CUDA_HOME, CUDA_PATH). */
    static Nvtx open(Settings settings, Map<String, String> env) {
        if (!settings.wanted()) {
            return new Nvtx("off: " + settings.why(), null, null);
        }
        Arena arena = Arena.ofShared();
        try {
            NvtxLibrary.Bound bound = NvtxLibrary.bind(settings.explicitLibrary(), env);
            return new Nvtx("on (" + settings.why() + "): " + bound.where() + ", domain " + DOMAIN, bound.api(), arena);
        } catch (RuntimeException e) {
            arena.close();
            return new Nvtx("off: ranges were asked for (" + settings.why() + ") but " + e.getMessage(), null, null);
        }
    }

    /** An enabled instance calling {@code api} instead of the library (tests). */
    static Nvtx withApi(NvtxApi api) {
        return new Nvtx("on: test API", Objects.requireNonNull(api, "api"), Arena.ofShared());
    }

    /** The process-wide instance the library's code uses. It is never closed: its names live as long as the process. */
    public static Nvtx process() {
        return PROCESS;
    }

    /** The process-wide name for {@code text}, interned; {@link Name#NONE} (nothing allocated) while off. */
    public static Name rangeName(String text) {
        return ON ? PROCESS.name(text) : Name.NONE;
    }

    /** Pushes {@code name} on this thread's stack of the process-wide domain; a shared no-op while off. */
    public static Range range(Name name) {
        if (!ON) {
            return NO_RANGE;
        }
        if (name.owner != PROCESS) {
            throw new IllegalArgumentException("NVTX range name '" + name.text + "' is not a process-wide name");
        }
        API.push(DOMAIN_HANDLE, name.attributes);
        return POP;
    }

    public boolean enabled() {
        return enabled;
    }

    /** "on (why): library, domain" or "off: why" — for {@code calibquant info} and the logs. */
    public String status() {
        return status;
    }

    /**
     * This instance's name for {@code text} (printable ASCII, at most 200 characters), built once and kept until
     * {@link #close}.
     */
    public Name name(String text) {
        Objects.requireNonNull(text, "text");
        if (!enabled) {
            return Name.NONE;
        }
        Name n = names.get(text);
        return n != null ? n : names.computeIfAbsent(text, this::build);
    }

    private Name build(String text) {
        if (text.isEmpty() || text.length() > 200 || !text.chars().allMatch(c -> c >= 0x20 && c < 0x7f)) {
            throw new IllegalArgumentException("an NVTX range name is 1 to 200 printable ASCII characters, got '" + text + "'");
        }
        checkOpen();
        MemorySegment message = arena.allocateFrom(text);
        MemorySegment a = arena.allocate(EVENT_ATTRIBUTES);
        a.set(ValueLayout.JAVA_SHORT, EVENT_ATTRIBUTES.byteOffset(MemoryLayout.PathElement.groupElement("version")), NVTX_VERSION);
        a.set(ValueLayout.JAVA_SHORT, EVENT_ATTRIBUTES.byteOffset(MemoryLayout.PathElement.groupElement("size")),
                (short) EVENT_ATTRIBUTES.byteSize());
        a.set(ValueLayout.JAVA_INT, EVENT_ATTRIBUTES.byteOffset(MemoryLayout.PathElement.groupElement("colorType")), NVTX_COLOR_ARGB);
        a.set(ValueLayout.JAVA_INT, EVENT_ATTRIBUTES.byteOffset(MemoryLayout.PathElement.groupElement("color")), color(text));
        a.set(ValueLayout.JAVA_INT, EVENT_ATTRIBUTES.byteOffset(MemoryLayout.PathElement.groupElement("messageType")),
                NVTX_MESSAGE_TYPE_ASCII);
        a.set(ValueLayout.ADDRESS, EVENT_ATTRIBUTES.byteOffset(MemoryLayout.PathElement.groupElement("message")), message);
        return new Name(this, text, a);
    }

    /** A stable opaque colour per name, so one kernel keeps its colour across timelines. */
    private static int color(String text) {
        int h = text.hashCode() * 0x9E3779B1;
        return 0xFF000000 | (h >>> 8) | 0x404040;
    }

    /** Pushes {@code name} (one of this instance's names) on this thread's range stack of the domain. */
    public Range push(Name name) {
        if (!enabled) {
            return NO_RANGE;
        }
        if (name.owner != this) {
            throw new IllegalArgumentException("NVTX range name '" + name.text + "' belongs to another Nvtx instance");
        }
        checkOpen();
        api.push(domain, name.attributes);
        return pop;
    }

    private void checkOpen() {
        if (closed) {
            throw new IllegalStateException("Nvtx is closed");
        }
    }

    /** Destroys the domain and frees the names. Not for {@link #process()}, which lives as long as the process. */
    @Override
    public void close() {
        if (this == PROCESS) {
            throw new IllegalStateException("the process-wide Nvtx is never closed");
        }
        if (closed || !enabled) {
            closed = true;
            return;
        }
        closed = true;
        api.destroyDomain(domain);
        arena.close();
    }
}
