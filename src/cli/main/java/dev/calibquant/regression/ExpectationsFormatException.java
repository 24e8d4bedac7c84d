package dev.calibquant.regression;

/** An expectations file is unreadable or disagrees with itself; the message names the place. */
public final class ExpectationsFormatException extends RuntimeException {
    public ExpectationsFormatException(String message) {
        super(message);
    }

    public ExpectationsFormatException(String message, Throwable cause) {
        super(message, cause);
    }
}
