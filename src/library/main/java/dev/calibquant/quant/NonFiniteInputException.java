package dev.calibquant.quant;

/**
 * An input tensor holds a NaN or an infinity. Thrown before anything is allocated or written.
 *
 * <p>Indices that do not apply to the tensor are -1.
 */
public class NonFiniteInputException extends IllegalArgumentException {
    private final String tensor;
    private final int head;
    private final int token;
    private final int channel;
    private final float value;

    public NonFiniteInputException(String tensor, int head, int token, int channel, float value) {
        super(tensor + ": non-finite value " + value + " at head " + head
                + (token >= 0 ? ", token " + token : "") + ", channel " + channel);
        this.tensor = tensor;
        this.head = head;
        this.token = token;
        this.channel = channel;
        this.value = value;
    }

    public String tensor() {
        return tensor;
    }

    public int head() {
        return head;
    }

    public int token() {
        return token;
    }

    public int channel() {
        return channel;
    }

    public float value() {
        return value;
    }
}
