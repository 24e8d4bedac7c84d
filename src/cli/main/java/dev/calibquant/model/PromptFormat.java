package dev.calibquant.model;

import dev.calibquant.cache.TokenSpan;

/**
 * The chat template, InternVL-style: {@code [prefix | visual tokens | question]}, where the prefix is
 * {@code <bos> <system> answer the question about the image . <user> <img>}, the visual tokens are
 * {@code visualTokens} placeholders {@code <image>} (replaced by the vision encoder's outputs), and the question part
 * is {@code </img> question <assistant>}. The answer is generated after {@code <assistant>}.
 */
public final class PromptFormat {
    static final int[] PREFIX = Vocabulary.ids("<bos> <system> answer the question about the image . <user> <img>");

    private PromptFormat() {
    }

    public static int prefixLength() {
        return PREFIX.length;
    }

    /** The prompt's token ids. */
    public static int[] prompt(int[] question, int visualTokens) {
        int[] tokens = new int[PREFIX.length + visualTokens + question.length + 2];
        System.arraycopy(PREFIX, 0, tokens, 0, PREFIX.length);
        int at = PREFIX.length;
        for (int i = 0; i < visualTokens; i++) {
            tokens[at++] = Vocabulary.IMAGE;
        }
        tokens[at++] = Vocabulary.IMG_END;
        System.arraycopy(question, 0, tokens, at, question.length);
        at += question.length;
        tokens[at] = Vocabulary.ASSISTANT;
        return tokens;
    }

    /** Where the visual tokens sit in every prompt. */
    public static TokenSpan visualSpan(int visualTokens) {
        return new TokenSpan(PREFIX.length, PREFIX.length + visualTokens);
    }
}
