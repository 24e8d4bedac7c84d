#!/usr/bin/env python3
"""tools/model/emulate_quantized_cache.py against Java: on the first 40 test images it must give the exact-match
counts `calibquant demo --table --images 40` gave on 2026-12-07 (fp16 32, 1 bit with no clipping and calibration 31,
1 bit about the midpoint at 0.7 uncalibrated 30, 2-bit CalibQuant 32 with fp16's own answers), so that a screen run
with it says something about the Java path; and the same with the question asked after the image
(`--question-after-image`, 2026-12-08).

    python3 -m unittest discover -s tools/tests -p 'test_emulated_cache.py'
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model"))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    import numpy  # noqa: F401
except ImportError:  # the CI machine may have no numpy: say so, never pass silently
    numpy = None


@unittest.skipIf(numpy is None, "numpy is not installed: the emulation needs it")
class EmulatedCacheAgainstJava(unittest.TestCase):
    def test_first_40_images_match_the_java_table(self):
        import emulate_quantized_cache as emu
        configs = ["fp16", "paper:1:1.0:1.0:cal", "mid:1:0.7:0.7:nocal", "paper:2:1.0:1.0:cal"]
        outcomes = emu.evaluate(ROOT, 40, configs, out=lambda line: None)
        self.assertEqual([sum(outcomes[c]) for c in configs], [32, 31, 30, 32])
        self.assertEqual(outcomes["paper:2:1.0:1.0:cal"], outcomes["fp16"])  # Java: +0.0 ± 0.0 paired

    def test_with_the_question_after_the_image_too(self):
        # `calibquant demo --table --question-after-image --images 40` on 2026-12-08: fp16 80.0 %, 1 bit about the
        # midpoint at 0.7 uncalibrated 57.5 %, 2-bit CalibQuant 62.5 %
        import emulate_quantized_cache as emu
        configs = ["fp16", "mid:1:0.7:0.7:nocal", "paper:2:1.0:1.0:cal"]
        outcomes = emu.evaluate(ROOT, 40, configs, out=lambda line: None, after_image=True)
        self.assertEqual([sum(outcomes[c]) for c in configs], [32, 23, 25])

    def test_an_unknown_config_is_refused(self):
        import emulate_quantized_cache as emu
        with self.assertRaises(SystemExit):
            emu.make("nonsense:1")


if __name__ == "__main__":
    unittest.main()
