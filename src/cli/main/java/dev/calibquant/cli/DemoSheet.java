package dev.calibquant.cli;

import dev.calibquant.model.Evaluation;
import dev.calibquant.model.TaskSample;
import java.awt.Color;
import java.awt.Font;
import java.awt.Graphics2D;
import java.awt.RenderingHints;
import java.awt.image.BufferedImage;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import javax.imageio.ImageIO;

/** A PNG contact sheet of demo results: each image enlarged, with its question, the truth and both answers. */
final class DemoSheet {
    private static final int SCALE = 4;
    private static final int COLUMNS = 4;
    private static final int TEXT_LINES = 4;
    private static final int LINE = 15;
    private static final int PANEL_WIDTH = 300;

    private DemoSheet() {
    }

    /** Draws the first results (at most 8); {@code labels} name the answers of each result, in order. */
    static void write(Path path, List<Evaluation.Result> results, List<String> labels) throws IOException {
        System.setProperty("java.awt.headless", "true");
        int count = Math.min(8, results.size());
        int rows = (count + COLUMNS - 1) / COLUMNS;
        int side = 64 * SCALE;
        int panelHeight = side + 10 + LINE * TEXT_LINES + 10;
        BufferedImage sheet = new BufferedImage(COLUMNS * PANEL_WIDTH, rows * panelHeight, BufferedImage.TYPE_INT_RGB);
        Graphics2D g = sheet.createGraphics();
        try {
            g.setColor(Color.WHITE);
            g.fillRect(0, 0, sheet.getWidth(), sheet.getHeight());
            g.setRenderingHint(RenderingHints.KEY_TEXT_ANTIALIASING, RenderingHints.VALUE_TEXT_ANTIALIAS_ON);
            g.setFont(new Font(Font.SANS_SERIF, Font.PLAIN, 12));
            for (int i = 0; i < count; i++) {
                Evaluation.Result r = results.get(i);
                int x0 = (i % COLUMNS) * PANEL_WIDTH + (PANEL_WIDTH - side) / 2;
                int y0 = (i / COLUMNS) * panelHeight + 5;
                g.drawImage(enlarged(r.sample()), x0, y0, null);
                int tx = (i % COLUMNS) * PANEL_WIDTH + 8;
                int ty = y0 + side + LINE + 2;
                g.setClip((i % COLUMNS) * PANEL_WIDTH, y0 + side, PANEL_WIDTH - 4, panelHeight - side - 5);
                g.setColor(Color.BLACK);
                g.drawString("Q: " + r.sample().questionText(), tx, ty);
                g.drawString("truth: " + r.sample().answerText(), tx, ty + LINE);
                for (int a = 0; a < Math.min(2, labels.size()); a++) {
                    boolean right = Evaluation.exactMatch(r.answers().get(a).tokens(), r.sample().answer());
                    g.setColor(right ? new Color(0, 120, 0) : new Color(190, 0, 0));
                    g.drawString(labels.get(a) + ": " + r.answers().get(a).text(), tx, ty + LINE * (2 + a));
                }
                g.setClip(null);
            }
        } finally {
            g.dispose();
        }
        dev.calibquant.io.OutputFile.write(path, out -> {
            if (!ImageIO.write(sheet, "png", out)) {
                throw new IOException("no PNG writer in this JDK");
            }
        });
    }

    private static BufferedImage enlarged(TaskSample sample) {
        byte[] rgb = sample.image();
        BufferedImage image = new BufferedImage(64 * SCALE, 64 * SCALE, BufferedImage.TYPE_INT_RGB);
        for (int y = 0; y < 64 * SCALE; y++) {
            for (int x = 0; x < 64 * SCALE; x++) {
                int p = ((y / SCALE) * 64 + x / SCALE) * 3;
                image.setRGB(x, y, (rgb[p] & 0xFF) << 16 | (rgb[p + 1] & 0xFF) << 8 | (rgb[p + 2] & 0xFF));
            }
        }
        return image;
    }
}
