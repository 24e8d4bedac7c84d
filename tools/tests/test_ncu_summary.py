#!/usr/bin/env python3
"""Tests of tools/gpu-host/ncu_summary.py on a hand-written raw-page CSV (the format of `ncu --import R --csv --page raw
--print-units base`: a header row, a units row, a row per launch). Run: python3 -m unittest discover -s tools/tests"""
import io
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tool_paths  # noqa: E402,F401  (puts tools/gpu-host on the path)
import ncu_summary  # noqa: E402

FIXTURE = """==PROF== Connected to process 4242 (/tmp/jre/bin/java)
==WARNING== Data collection happened without fixed GPU frequencies.
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","dram__bytes.sum","dram__throughput.avg.pct_of_peak_sustained_elapsed","gpu__time_duration.sum","launch__registers_per_thread","launch__shared_mem_per_block_dynamic","launch__shared_mem_per_block_static","sm__maximum_warps_per_active_cycle_pct","sm__throughput.avg.pct_of_peak_sustained_elapsed","sm__warps_active.avg.pct_of_peak_sustained_active"
"","","","","","","","","","","","byte","%","nsecond","register/thread","byte/block","byte/block","%","%","%"
"0","4242","java","127.0.0.1","calibquant_decode_b1_d128_mm2","1","15","(128, 1, 1)","(128, 8, 1)","0","9.0","87,654,321","6.68","272,450","192","104,448","0","12.50","53.46","12.10"
"1","4242","java","127.0.0.1","fp16_decode_d128","1","15","(128, 1, 1)","(64, 8, 1)","0","9.0","n/a","70.10","222,800","96","71,680","0","25","40.2","24.9"
"""


class SummaryTest(unittest.TestCase):
    def test_every_column_is_read_and_converted(self):
        rows = ncu_summary.summarise(FIXTURE)
        self.assertEqual(len(rows), 2)
        r = rows[0]
        self.assertEqual(r["id"], "0")
        self.assertEqual(r["kernel"], "calibquant_decode_b1_d128_mm2")
        self.assertEqual(r["grid"], "(128, 8, 1)")
        self.assertEqual(r["block"], "(128, 1, 1)")
        self.assertAlmostEqual(r["duration_us"], 272.45)
        self.assertEqual(r["dram_bytes"], 87654321.0)
        self.assertAlmostEqual(r["dram_gbs"], 87654321 / 272.45e-6 / 1e9)
        self.assertAlmostEqual(r["dram_pct_of_peak"], 6.68)
        self.assertAlmostEqual(r["sm_throughput_pct"], 53.46)
        self.assertAlmostEqual(r["occupancy_achieved_pct"], 12.10)
        self.assertAlmostEqual(r["occupancy_theoretical_pct"], 12.5)
        self.assertEqual(r["registers_per_thread"], 192.0)
        self.assertEqual(r["shared_bytes_per_block"], 104448.0)

    def test_a_value_the_report_lacks_is_none_and_prints_as_na(self):
        r = ncu_summary.summarise(FIXTURE)[1]
        self.assertIsNone(r["dram_bytes"])
        self.assertIsNone(r["dram_gbs"])
        out = io.StringIO()
        ncu_summary.write_markdown([r], out, "t")
        self.assertIn("| 1 | `fp16_decode_d128` |", out.getvalue())
        self.assertIn("n/a", out.getvalue())

    def test_a_metric_missing_from_the_report_is_none(self):
        header = ('"ID","Kernel Name","gpu__time_duration.sum"\n'
                  '"","","usecond"\n'
                  '"7","append_token_d128","3.5"\n')
        r = ncu_summary.summarise(header)[0]
        self.assertAlmostEqual(r["duration_us"], 3.5)
        self.assertIsNone(r["registers_per_thread"])
        self.assertIsNone(r["shared_bytes_per_block"])
        self.assertEqual(r["grid"], "n/a")

    def test_units_with_prefixes_come_to_base_units(self):
        self.assertEqual(ncu_summary.scaled(2.0, "Kbyte", ncu_summary._BYTES), 2000.0)
        self.assertEqual(ncu_summary.scaled(1.5, "Mbyte/block", ncu_summary._BYTES), 1.5e6)
        self.assertAlmostEqual(ncu_summary.scaled(3.0, "msecond", ncu_summary._TIME), 3e-3)
        self.assertIsNone(ncu_summary.scaled(3.0, "furlong", ncu_summary._TIME))
        self.assertIsNone(ncu_summary.number("n/a"))
        self.assertEqual(ncu_summary.number("1,234.5"), 1234.5)

    def test_input_without_a_table_is_refused(self):
        with self.assertRaises(ValueError):
            ncu_summary.summarise("==PROF== No kernels were profiled.\n")

    def test_the_command_writes_both_files(self):
        with tempfile.TemporaryDirectory() as d:
            raw = os.path.join(d, "raw.csv")
            with open(raw, "w") as f:
                f.write(FIXTURE)
            csv_out, md_out = os.path.join(d, "s.csv"), os.path.join(d, "s.md")
            self.assertEqual(ncu_summary.main([raw, "--csv", csv_out, "--md", md_out, "--title", "B = 64"]), 0)
            with open(csv_out) as f:
                lines = f.read().splitlines()
            self.assertEqual(lines[0].split(","), ncu_summary.COLUMNS)
            self.assertEqual(len(lines), 3)
            self.assertIn("n/a", lines[2])
            with open(md_out) as f:
                md = f.read()
            self.assertTrue(md.startswith("# B = 64"))
            self.assertIn("calibquant_decode_b1_d128_mm2", md)
            self.assertRegex(md, r"\| 272\.[45] \| 87,654,321 \| 321\.7 \| 6\.7 \| 53\.5 \| 12\.1 / 12\.5 \| 192 \| 104,448 \|")


if __name__ == "__main__":
    unittest.main()
