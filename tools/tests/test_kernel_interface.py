#!/usr/bin/env python3
"""ptx/kernels/interface.py is the one definition of the kernels' tables and scratch layouts: the kernel sources spell
out the same constants, and the shipped manifest carries the same schema (Java checks its side, KernelInterfaceTest).

    python3 -m unittest discover -s tools/tests -p 'test_kernel_interface.py'
"""
import json
import os
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ptx" / "kernels"))
import interface  # noqa: E402


class KernelInterface(unittest.TestCase):
    def test_kernel_sources_agree_with_the_interface(self):
        self.assertEqual(interface.check_kernel_sources(), [])

    def test_the_shipped_manifest_carries_the_interface(self):
        manifest = json.loads((ROOT / "ptx" / "manifest.json").read_text())
        self.assertEqual(manifest.get("interface"), interface.schema(),
                         "ptx/manifest.json's interface differs: python3 tools/build/compile_ptx.py --interface-only")

    def test_a_disagreeing_or_missing_constant_is_named(self):
        with tempfile.TemporaryDirectory() as d:
            for f in interface.KERNEL_CONSTANTS:
                text = (ROOT / "ptx" / "kernels" / f).read_text()
                if f == "attention.py":
                    text = text.replace("SEQ_COLS = tl.constexpr(6)", "SEQ_COLS = tl.constexpr(7)")
                if f == "quantize.py":
                    text = text.replace("SYNC_HEAD = tl.constexpr(4)", "SYNC_HEAD_RENAMED = tl.constexpr(4)")
                Path(d, f).write_text(text)
            problems = interface.check_kernel_sources(d)
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("attention.py: SEQ_COLS = 7, the interface says 6", problems)
        self.assertTrue(any("quantize.py: SYNC_HEAD is defined 0 times" in p for p in problems), problems)


if __name__ == "__main__":
    unittest.main()
