#!/usr/bin/env python3
"""The kernel harness's quantizer (tools/harness/kernel_reference.py: ref_quantize, pack_codes) against the Java
library's ChannelQuantizer, through the fixture HarnessQuantizerFixtureTest keeps equal to what Java makes
(tools/tests/fixtures/java-quantizer.json). The harness computes in float32 as the kernel does; Java decides each code
on the exact quotient. So: offsets (clip * min) bit for bit; scales within one float32 ulp (Java rounds once, the
harness twice); the bit packing exactly; and a code may differ by one step only where the exact quotient
u = (x - alpha) * L / (beta - alpha) lies within the harness's float32 error of the rounding boundary between them.

    python3 -m unittest discover -s tools/tests -p 'test_harness_quantizer.py'
"""
import json
import os
import sys
import unittest
from fractions import Fraction

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tool_paths  # noqa: E402,F401  (puts tools/harness on the path)

try:
    import numpy as np
except ImportError:  # the CI machine may have no numpy: say so, never pass silently
    np = None

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "java-quantizer.json")
U32 = 2.0 ** -24  # float32 unit roundoff


@unittest.skipIf(np is None, "numpy is not installed: the harness quantizer needs it")
class HarnessQuantizerAgainstJava(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import kernel_reference
        cls.ck = kernel_reference
        with open(FIXTURE) as f:
            cls.fx = json.load(f)
        t, c = cls.fx["tokens"], cls.fx["channels"]
        cls.x16 = np.array(cls.fx["x16"], np.uint16).view(np.float16).reshape(t, c)

    def unpack(self, packed, bits, t, c):
        b = np.array(packed, np.uint8).reshape(t, c * bits // 8)
        per = 8 // bits
        shifts = bits * (per - 1 - np.arange(per))
        return ((b[:, :, None] >> shifts) & ((1 << bits) - 1)).reshape(t, c).astype(np.int64)

    def test_offsets_scales_packing_and_codes_agree(self):
        t, c = self.x16.shape
        for case in self.fx["cases"]:
            bits, clip = case["bits"], case["clip"]
            with self.subTest(bits=bits, clip=clip):
                codes, sigma, alpha = self.ck.ref_quantize(self.x16, bits, clip)
                j_alpha = np.array(case["alpha_bits"], np.uint32).view(np.float32)
                j_sigma = np.array(case["sigma_bits"], np.uint32).view(np.float32)
                self.assertTrue(np.array_equal(alpha.view(np.uint32), j_alpha.view(np.uint32)), "offsets differ")
                ulps = np.abs(sigma.view(np.int32).astype(np.int64) - j_sigma.view(np.int32).astype(np.int64))
                self.assertLessEqual(int(ulps.max()), 1, "scales differ by more than one ulp")
                j_codes = self.unpack(case["packed"], bits, t, c)
                self.assertEqual(self.ck.pack_codes(j_codes, bits).reshape(-1).tolist(), case["packed"],
                                 "bit packing differs")
                levels = (1 << bits) - 1
                diff = codes.astype(np.int64) - j_codes
                self.assertLessEqual(int(np.abs(diff).max()), 1)
                for n, d in zip(*np.nonzero(diff)):
                    x, a = Fraction(float(self.x16[n, d])), Fraction(float(j_alpha[d]))
                    beta = Fraction(float(np.float32(clip) * self.x16[:, d].astype(np.float32).max()))
                    u = (x - a) * levels / (beta - a)
                    boundary = Fraction(int(min(codes[n, d], j_codes[n, d]))) + Fraction(1, 2)
                    s = float(sigma[d])
                    # the harness's x/sigma + (-alpha/sigma): four float32 roundings, each at most U32 relative to
                    # the terms' magnitude (sigma itself off by two)
                    bound = 6 * U32 * (abs(float(x)) / s + abs(float(a)) / s)
                    self.assertLessEqual(abs(float(u - boundary)), bound,
                                         f"token {n} channel {d}: code {codes[n, d]} vs Java {j_codes[n, d]} "
                                         f"with the exact quotient {float(u)} away from the boundary")


if __name__ == "__main__":
    unittest.main()
