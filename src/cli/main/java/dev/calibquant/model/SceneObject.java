package dev.calibquant.model;

/**
 * One shape of a scene: which cell of the 4×4 grid it sits in (row-major), what it looks like, and how far its
 * centre is moved from the cell's centre.
 *
 * @param cell 0..15, row {@code cell / 4}, column {@code cell % 4}
 * @param color index into {@link SceneRenderer#PALETTE} and the color words
 * @param shape 0 circle, 1 square, 2 triangle
 * @param size 0 small, 1 large
 * @param jitterX −1..1 pixels
 * @param jitterY −1..1 pixels
 */
public record SceneObject(int cell, int color, int shape, int size, int jitterX, int jitterY) {

    public int row() {
        return cell / 4;
    }

    public int column() {
        return cell % 4;
    }

    /** "large red circle". */
    public String describe() {
        return Vocabulary.word(Vocabulary.SIZE_0 + size) + " " + Vocabulary.word(Vocabulary.COLOR_0 + color) + " "
                + Vocabulary.word(Vocabulary.SHAPE_0 + shape);
    }
}
