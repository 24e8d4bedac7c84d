package dev.calibquant.cache;

import java.util.List;

/**
 * A cache manager was closed while sequences were still open. By the time this is thrown their memory is freed and
 * the manager is closed; the exception reports what was left open, so the leak is seen rather than hidden.
 */
public final class CacheLeakException extends IllegalStateException {

    /** One sequence that was open at close ({@link Sequence#id()}, as messages name it), with what it held. */
    public record LeakedSequence(long sequenceId, String description, MemoryUsage usage) {
    }

    private final List<LeakedSequence> leaked;

    public CacheLeakException(List<LeakedSequence> leaked) {
        super(message(leaked));
        this.leaked = List.copyOf(leaked);
    }

    public List<LeakedSequence> leaked() {
        return leaked;
    }

    private static String message(List<LeakedSequence> leaked) {
        StringBuilder text = new StringBuilder("KV cache closed with ").append(leaked.size())
                .append(" sequence(s) still open, now freed:");
        for (LeakedSequence s : leaked) {
            text.append("\n  ").append(s.description()).append(": ").append(s.usage());
        }
        return text.toString();
    }
}
