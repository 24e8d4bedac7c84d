package dev.calibquant.cache;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;

/** Token positions {@code [start, end)} of a prompt: where one image's visual tokens sit. Never empty. */
public record TokenSpan(int start, int end) {

    public TokenSpan {
        if (start < 0 || end <= start) {
            throw new IllegalArgumentException("token span [" + start + ", " + end + ") is empty or negative");
        }
    }

    public int length() {
        return end - start;
    }

    /**
     * The spans sorted by start, after checking that each lies within {@code [0, tokens)} and that no two overlap.
     *
     * @throws IllegalArgumentException naming the offending span(s)
     */
    public static List<TokenSpan> sortedWithin(List<TokenSpan> spans, int tokens) {
        List<TokenSpan> sorted = new ArrayList<>(spans);
        sorted.sort(Comparator.comparingInt(TokenSpan::start));
        for (int i = 0; i < sorted.size(); i++) {
            TokenSpan span = sorted.get(i);
            if (span.end > tokens) {
                throw new IllegalArgumentException("visual span " + span + " runs past the prompt's " + tokens
                        + " tokens");
            }
            if (i > 0 && span.start < sorted.get(i - 1).end) {
                throw new IllegalArgumentException("visual spans " + sorted.get(i - 1) + " and " + span + " overlap");
            }
        }
        return List.copyOf(sorted);
    }

    @Override
    public String toString() {
        return "[" + start + ", " + end + ")";
    }
}
