package dev.calibquant.model;

import dev.calibquant.attention.CpuCalibQuantAttention;
import dev.calibquant.attention.DecodeAttention;
import dev.calibquant.quant.Calibration;

/**
 * Makes the decode attention for a calibration ({@link Calibration#OFF} for full-precision caches): the hook through
 * which a GPU implementation replaces the CPU one.
 */
@FunctionalInterface
public interface DecodeAttentionFactory {

    DecodeAttention create(Calibration calibration);

    /** {@link CpuCalibQuantAttention} on the common fork-join pool. */
    static DecodeAttentionFactory cpu() {
        return CpuCalibQuantAttention::new;
    }
}
