package dev.calibquant.regression;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;

/**
 * The fixed seed of a regression case: the first 8 bytes (big-endian) of SHA-256 of {@code "<variant>#<case index>"}
 * in UTF-8. Stable on every machine and JDK; distinct variants draw distinct inputs.
 */
public final class CaseSeeds {
    private CaseSeeds() {}

    public static long seed(String variant, int caseIndex) {
        try {
            byte[] digest = MessageDigest.getInstance("SHA-256")
                    .digest((variant + "#" + caseIndex).getBytes(StandardCharsets.UTF_8));
            return ByteBuffer.wrap(digest, 0, 8).getLong();
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is missing from this JDK", e);
        }
    }
}
