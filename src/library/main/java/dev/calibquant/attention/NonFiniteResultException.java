package dev.calibquant.attention;

/** Attention produced a NaN or an infinity (the cache must hold one); nothing was written to the output. */
public class NonFiniteResultException extends IllegalStateException {
    public NonFiniteResultException(int sequence, int queryHead, int channel, float value) {
        super("attention output of sequence " + sequence + ", query head " + queryHead + ", channel " + channel
                + " is " + value + "; the cache of that sequence holds a non-finite value");
    }
}
