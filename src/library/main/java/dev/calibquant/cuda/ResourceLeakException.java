package dev.calibquant.cuda;

import java.util.List;

/** An owner was closed while resources it owns were still open; they were freed, and this lists them. */
public final class ResourceLeakException extends IllegalStateException {
    private final List<String> leaked;

    public ResourceLeakException(String owner, List<String> leaked) {
        super(owner + " closed with " + leaked.size() + " resource(s) still open (freed now): " + String.join("; ", leaked));
        this.leaked = List.copyOf(leaked);
    }

    public List<String> leaked() {
        return leaked;
    }
}
