package dev.calibquant.model;

import java.util.List;

/**
 * Draws a scene into a 64×64 RGB image with integer arithmetic only, so that Python draws the same bytes.
 *
 * <p>The image is split into a 4×4 grid of 16-pixel cells. An object's centre is {@code (16·column + 8 + jitterX,
 * 16·row + 8 + jitterY)}, its radius {@code r} is 3 (small) or 6 (large); a pixel at offset {@code (dx, dy)} from the
 * centre belongs to a circle when {@code dx² + dy² ≤ r² + r}, to a square when {@code |dx| ≤ r} and {@code |dy| ≤ r},
 * to an upward triangle when {@code −r ≤ dy ≤ r} and {@code 2|dx| ≤ dy + r}. Objects never share a cell, so no two
 * overlap.
 */
public final class SceneRenderer {
    public static final int SIZE = 64;
    public static final int CELL = 16;
    public static final int GRID = 4;
    public static final int[] BACKGROUND = {20, 20, 20};
    public static final int[][] PALETTE = {
        {220, 50, 47}, // red
        {60, 180, 75}, // green
        {50, 100, 230}, // blue
        {240, 220, 50}, // yellow
        {150, 70, 200}, // purple
        {70, 210, 220}, // cyan
    };
    private static final int[] RADIUS = {3, 6};

    private SceneRenderer() {
    }

    /** {@code [64][64][3]} bytes, row-major, RGB. */
    public static byte[] render(List<SceneObject> objects) {
        byte[] rgb = new byte[SIZE * SIZE * 3];
        for (int p = 0; p < SIZE * SIZE; p++) {
            for (int c = 0; c < 3; c++) {
                rgb[p * 3 + c] = (byte) BACKGROUND[c];
            }
        }
        for (SceneObject o : objects) {
            int cx = CELL * o.column() + CELL / 2 + o.jitterX();
            int cy = CELL * o.row() + CELL / 2 + o.jitterY();
            int r = RADIUS[o.size()];
            int[] color = PALETTE[o.color()];
            for (int y = cy - r; y <= cy + r; y++) {
                for (int x = cx - r; x <= cx + r; x++) {
                    if (covers(o.shape(), x - cx, y - cy, r)) {
                        int p = (y * SIZE + x) * 3;
                        rgb[p] = (byte) color[0];
                        rgb[p + 1] = (byte) color[1];
                        rgb[p + 2] = (byte) color[2];
                    }
                }
            }
        }
        return rgb;
    }

    static boolean covers(int shape, int dx, int dy, int r) {
        return switch (shape) {
            case 0 -> dx * dx + dy * dy <= r * r + r;
            case 1 -> Math.abs(dx) <= r && Math.abs(dy) <= r;
            case 2 -> dy >= -r && dy <= r && 2 * Math.abs(dx) <= dy + r;
            default -> throw new IllegalArgumentException("shape " + shape + " is not 0, 1 or 2");
        };
    }
}
