package dev.calibquant.model;

import java.io.IOException;

/** A weights file that is readable safetensors but not this model: a missing, extra or misshapen tensor, a bad config. */
public final class WeightsFormatException extends IOException {

    public WeightsFormatException(String message) {
        super(message);
    }

    public WeightsFormatException(String message, Throwable cause) {
        super(message, cause);
    }
}
