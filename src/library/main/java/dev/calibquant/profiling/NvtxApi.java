package dev.calibquant.profiling;

import java.lang.foreign.MemorySegment;

/** The four NVTX calls the ranges need; one implementation calls the library, tests substitute a recording one. */
interface NvtxApi {

    /** {@code nvtxDomainCreateA}: NULL where no tool is attached (every later call is then a no-op in the library). */
    MemorySegment createDomain(MemorySegment name);

    /** {@code nvtxDomainDestroy}. */
    void destroyDomain(MemorySegment domain);

    /** {@code nvtxDomainRangePushEx}: the new depth, or a negative value where the library does not track ranges. */
    int push(MemorySegment domain, MemorySegment eventAttributes);

    /** {@code nvtxDomainRangePop}. */
    int pop(MemorySegment domain);
}
