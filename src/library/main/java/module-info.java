/**
 * CalibQuant for Java: a KV cache for multimodal LLMs whose visual tokens are stored at 1 (or 2, 4, 8) bits per
 * element with post-scaling and calibration (arXiv 2502.14882), with decode attention on NVIDIA GPUs through the CUDA
 * driver API (FFM, no JNI) and a pure-Java CPU path.
 *
 * <p>Where to start: {@link dev.calibquant.gpu.DeviceKvCache} (the cache in GPU memory and its decode attention),
 * {@link dev.calibquant.gpu.KvCacheBackend} (GPU where usable, CPU otherwise), {@link dev.calibquant.cache.KvCacheManager}
 * (sequences and memory accounting, host or device), {@link dev.calibquant.attention.DecodeAttention} (the CPU
 * implementations and the reference), {@link dev.calibquant.sharding.ShardedKvCache} (one cache over several GPUs,
 * placed by sequence or by KV head). The generated CUDA bindings, the kernel catalog and launches, and the NVTX
 * ranges are internal: not exported.
 */
module dev.calibquant {
    requires com.fasterxml.jackson.databind;

    exports dev.calibquant.quant;
    exports dev.calibquant.cache;
    exports dev.calibquant.attention;
    exports dev.calibquant.cuda;
    exports dev.calibquant.gpu;
    exports dev.calibquant.sharding;

    // the kernel manifest is read into records by Jackson
    opens dev.calibquant.kernels to com.fasterxml.jackson.databind;
}
