package dev.calibquant.io;

import java.io.IOException;

/** A safetensors file whose bytes do not follow the format; the message names the file and the problem. */
public final class SafetensorsFormatException extends IOException {

    public SafetensorsFormatException(String message) {
        super(message);
    }

    public SafetensorsFormatException(String message, Throwable cause) {
        super(message, cause);
    }
}
