package dev.calibquant.kernels;

import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** The header facts of a PTX file and the parameter list of its {@code .entry}, read from the PTX text. */
public record PtxEntry(String version, String target, String name, List<String> paramTypes) {

    private static final Pattern VERSION = Pattern.compile("^\\s*\\.version\\s+(\\S+)", Pattern.MULTILINE);
    private static final Pattern TARGET = Pattern.compile("^\\s*\\.target\\s+([^\\s,]+)", Pattern.MULTILINE);
    private static final Pattern ENTRY = Pattern.compile("\\.entry\\s+([A-Za-z_$][\\w$]*)\\s*\\(([^)]*)\\)", Pattern.DOTALL);
    private static final Pattern PARAM = Pattern.compile("\\.param\\s+\\.(\\w+)");

    public static PtxEntry parse(String ptx) {
        String version = find(VERSION, ptx, "a .version line");
        String target = find(TARGET, ptx, "a .target line");
        Matcher entry = ENTRY.matcher(ptx);
        if (!entry.find()) {
            throw new KernelManifestException("PTX has no .entry");
        }
        String name = entry.group(1);
        List<String> params = new ArrayList<>();
        for (String param : entry.group(2).split(",")) {
            if (param.isBlank()) {
                continue;
            }
            Matcher m = PARAM.matcher(param);
            if (!m.find()) {
                throw new KernelManifestException("unreadable .param in .entry " + name + ": " + param.strip());
            }
            params.add(m.group(1));
        }
        if (entry.find()) {
            throw new KernelManifestException("PTX holds more than one .entry; one kernel per file is expected");
        }
        return new PtxEntry(version, target, name, List.copyOf(params));
    }

    /** PTX ISA version as major * 10 + minor (8.7 → 87). */
    public int versionNumber() {
        String[] parts = version.split("\\.");
        return Integer.parseInt(parts[0]) * 10 + Integer.parseInt(parts[1]);
    }

    private static String find(Pattern p, String text, String what) {
        Matcher m = p.matcher(text);
        if (!m.find()) {
            throw new KernelManifestException("PTX has no " + what);
        }
        return m.group(1);
    }
}
