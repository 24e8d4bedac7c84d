package dev.calibquant.model;

import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The scene task's tokens: one word each, ids fixed. The weights file carries the same list (metadata
 * {@code vocab}); a model trained on another list is refused at load.
 */
public final class Vocabulary {
    public static final List<String> WORDS = List.of(
            "<pad>", "<bos>", "<eos>", "<system>", "<user>", "<assistant>", "<img>", "</img>", "<image>",
            "answer", "the", "question", "about", "image", ".", "what", "is", "at", "row", "column", "where", "how",
            "many", "shapes", "in", "and", "nothing", "?",
            "0", "1", "2", "3", "4", "5",
            "red", "green", "blue", "yellow", "purple", "cyan",
            "circle", "square", "triangle",
            "circles", "squares", "triangles",
            "small", "large");

    public static final int PAD = 0;
    public static final int BOS = 1;
    public static final int EOS = 2;
    public static final int SYSTEM = 3;
    public static final int USER = 4;
    public static final int ASSISTANT = 5;
    public static final int IMG_START = 6;
    public static final int IMG_END = 7;
    /** Stands in the prompt where a visual token goes; its embedding is never used. */
    public static final int IMAGE = 8;
    public static final int DIGIT_0 = 28;
    public static final int COLOR_0 = 34;
    public static final int SHAPE_0 = 40;
    public static final int PLURAL_0 = 43;
    public static final int SIZE_0 = 46;

    private static final Map<String, Integer> IDS = new HashMap<>();

    static {
        for (int i = 0; i < WORDS.size(); i++) {
            IDS.put(WORDS.get(i), i);
        }
    }

    private Vocabulary() {
    }

    public static int size() {
        return WORDS.size();
    }

    /** @throws IllegalArgumentException for a word not in the vocabulary */
    public static int id(String word) {
        Integer id = IDS.get(word);
        if (id == null) {
            throw new IllegalArgumentException("'" + word + "' is not in the scene task's vocabulary");
        }
        return id;
    }

    public static String word(int id) {
        if (id < 0 || id >= WORDS.size()) {
            throw new IllegalArgumentException("token id " + id + " is outside the vocabulary of " + WORDS.size());
        }
        return WORDS.get(id);
    }

    /** The words of {@code ids} joined by spaces, stopping before the first {@code <eos>}. */
    public static String text(int[] ids) {
        StringBuilder s = new StringBuilder();
        for (int id : ids) {
            if (id == EOS) {
                break;
            }
            if (!s.isEmpty()) {
                s.append(' ');
            }
            s.append(word(id));
        }
        return s.toString();
    }

    static int[] ids(String words) {
        String[] parts = words.trim().split(" +");
        int[] ids = new int[parts.length];
        for (int i = 0; i < parts.length; i++) {
            ids[i] = id(parts[i]);
        }
        return ids;
    }
}
