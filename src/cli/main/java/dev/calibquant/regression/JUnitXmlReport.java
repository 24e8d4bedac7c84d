package dev.calibquant.regression;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.List;
import java.util.Locale;
import javax.xml.stream.XMLOutputFactory;
import javax.xml.stream.XMLStreamException;
import javax.xml.stream.XMLStreamWriter;

/**
 * The suite's outcome as JUnit XML, the format CI systems read: one {@code testsuite} per PTX target, one
 * {@code testcase} per kernel variant; FAIL and NO EXPECTATIONS are {@code failure}s, NOT LOADABLE is
 * {@code skipped} with the reason.
 */
public final class JUnitXmlReport {
    private JUnitXmlReport() {}

    public static void write(List<RegressionSuite.Report> reports, Path file) throws IOException {
        Path dir = file.toAbsolutePath().getParent();
        if (dir != null) {
            Files.createDirectories(dir);
        }
        dev.calibquant.io.OutputFile.write(file, out -> write(reports, out));
    }

    public static void write(List<RegressionSuite.Report> reports, OutputStream out) throws IOException {
        try {
            XMLStreamWriter w = XMLOutputFactory.newFactory().createXMLStreamWriter(out, "UTF-8");
            w.writeStartDocument("UTF-8", "1.0");
            w.writeCharacters("\n");
            w.writeStartElement("testsuites");
            w.writeAttribute("name", "calibquant kernel regression");
            for (RegressionSuite.Report r : reports) {
                writeSuite(w, r);
            }
            w.writeCharacters("\n");
            w.writeEndElement();
            w.writeEndDocument();
            w.close();
        } catch (XMLStreamException e) {
            throw new IOException("cannot write the JUnit XML report: " + e.getMessage(), e);
        }
    }

    private static void writeSuite(XMLStreamWriter w, RegressionSuite.Report r) throws XMLStreamException {
        long failures = r.count(RegressionSuite.Status.FAIL) + r.count(RegressionSuite.Status.NO_EXPECTATIONS);
        double seconds = r.results().stream().mapToDouble(RegressionSuite.KernelResult::seconds).sum();
        w.writeCharacters("\n  ");
        w.writeStartElement("testsuite");
        w.writeAttribute("name", "calibquant.regression." + clean(r.target()));
        w.writeAttribute("tests", Integer.toString(r.results().size()));
        w.writeAttribute("failures", Long.toString(failures));
        w.writeAttribute("errors", "0");
        w.writeAttribute("skipped", Long.toString(r.count(RegressionSuite.Status.NOT_LOADABLE)));
        w.writeAttribute("time", seconds(seconds));
        w.writeAttribute("timestamp", Instant.now().toString());
        w.writeAttribute("hostname", clean(r.device()));
        for (RegressionSuite.KernelResult k : r.results()) {
            w.writeCharacters("\n    ");
            w.writeStartElement("testcase");
            w.writeAttribute("classname", "calibquant.regression." + clean(r.target()));
            w.writeAttribute("name", clean(k.kernel()));
            w.writeAttribute("time", seconds(k.seconds()));
            switch (k.status()) {
                case PASS -> {
                    w.writeStartElement("system-out");
                    w.writeCharacters(clean(k.detail()));
                    w.writeEndElement();
                }
                case NOT_LOADABLE -> {
                    w.writeEmptyElement("skipped");
                    w.writeAttribute("message", clean("not loadable here: " + k.detail()));
                }
                case FAIL, NO_EXPECTATIONS -> {
                    w.writeStartElement("failure");
                    w.writeAttribute("type", k.status().name());
                    w.writeAttribute("message", clean(k.status().label() + ": " + k.detail()));
                    w.writeCharacters(clean(k.detail()));
                    w.writeEndElement();
                }
            }
            w.writeEndElement();
        }
        w.writeCharacters("\n  ");
        w.writeEndElement();
    }

    private static String seconds(double s) {
        return String.format(Locale.ROOT, "%.3f", s);
    }

    /** Drops the characters XML 1.0 cannot carry at all (the writer escapes the rest). */
    static String clean(String s) {
        if (s == null) {
            return "";
        }
        StringBuilder b = new StringBuilder(s.length());
        s.codePoints().forEach(c -> {
            boolean ok = c == 0x9 || c == 0xA || c == 0xD || (c >= 0x20 && c <= 0xD7FF) || (c >= 0xE000 && c <= 0xFFFD)
                    || (c >= 0x10000 && c <= 0x10FFFF);
            b.appendCodePoint(ok ? c : '?');
        });
        return b.toString();
    }
}
