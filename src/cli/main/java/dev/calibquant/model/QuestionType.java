package dev.calibquant.model;

/** The five kinds of question the scene task asks; the answer of each is a function of the scene. */
public enum QuestionType {
    /** "what is at row R column C ?" → "large red circle" or "nothing". */
    WHAT_AT,
    /** "where is the red circle ?" → "row R column C". */
    WHERE,
    /** "how many red shapes ?" → a digit. */
    COUNT_COLOR,
    /** "how many circles ?" → a digit. */
    COUNT_SHAPE,
    /** "what is in row R ?" → the row's objects left to right joined by "and", or "nothing". */
    LIST_ROW
}
