#!/usr/bin/env python3
"""tuning_candidates.trace_summary: the phases of a mode-3 timeline (attention_gluon.py's trace rows) on a hand-built
launch whose every duration is known.

    python3 -m unittest discover -s tools/tests -p 'test_trace_summary.py'
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tool_paths  # noqa: E402,F401  (puts tools/harness on the path)

try:
    import numpy as np
except ImportError:  # the CI machine may have no numpy: say so, never pass silently
    np = None


def row(sm, tokens, start, tables, weights, keys, rendezvous, values, arrived, merged):
    """A trace row; times in us, stored as ns like %globaltimer (0: the phase does not happen)."""
    ns = lambda t: int(round(t * 1000)) if t else 0
    return [sm, tokens] + [ns(t) for t in (start, tables, weights, keys, rendezvous, values, arrived, merged)]


@unittest.skipIf(np is None, "numpy is not installed")
class TraceSummaryTest(unittest.TestCase):
    def launch(self):
        # 2 KV heads x 3 items (ticket order: KV head 0's items, then KV head 1's); item 0 of each is full precision,
        # items 1-2 visual; one sequence (items of both KV heads belong to sequence 0)
        base = 1000.0  # the first program starts at 1000 us
        rows = [
            row(0, 105, base, base + 1, 0, base + 6, 0, 0, base + 7, 0),
            row(1, 256, base, base + 1, base + 2, base + 4, base + 5, base + 8, base + 9, 0),
            row(2, 256, base + 0.5, base + 1.5, base + 2.5, base + 4.5, base + 5.5, base + 8.5, base + 10, base + 14),
            row(0, 105, base, base + 1, 0, base + 6, 0, 0, base + 7, 0),
            row(3, 256, base, base + 1, base + 2, base + 4, base + 5, base + 8, base + 9, base + 12),
            row(4, 256, base, base + 1, base + 2, base + 4, base + 5, base + 8, base + 8.5, 0),
        ]
        return np.array(rows, np.int64), np.array([0, 0, 0])

    def test_phase_durations(self):
        import tuning_candidates as ck
        s = ck.trace_summary(*self.launch())
        self.assertEqual(s["programs"], 6)
        self.assertEqual(s["visual_items"], 4)
        self.assertAlmostEqual(s["span_us"], 14.0)
        self.assertAlmostEqual(s["start_offset_us"]["max"], 0.5)
        self.assertAlmostEqual(s["tables_us"]["median"], 1.0)
        self.assertAlmostEqual(s["keys_us"]["median"], 2.0)
        self.assertAlmostEqual(s["fp_item_us"]["max"], 5.0)
        self.assertAlmostEqual(s["rendezvous_wait_us"]["median"], 1.0)
        self.assertAlmostEqual(s["values_us"]["median"], 3.0)
        self.assertAlmostEqual(s["finish_visual_us"]["max"], 1.5)
        self.assertAlmostEqual(s["merge_us"]["max"], 4.0)
        self.assertEqual(s["programs_per_sm_max"], 2)
        self.assertEqual(s["sms_used"], 5)

    def test_last_group_is_the_one_that_merges_last(self):
        import tuning_candidates as ck
        rows, seqs = self.launch()
        g = ck.trace_summary(rows, seqs)["last_group"]
        self.assertEqual(g["items"], 3)  # KV head 0 merged at 14 us, after KV head 1 (12 us)
        self.assertAlmostEqual(g["last_values"], 8.5)
        self.assertAlmostEqual(g["last_arrival"], 10.0)
        self.assertAlmostEqual(g["merged"], 14.0)
        rows[4, 9] += 3_000  # now KV head 1 merges last, at 15 us
        g = ck.trace_summary(rows, seqs)["last_group"]
        self.assertAlmostEqual(g["merged"], 15.0)
        self.assertAlmostEqual(g["last_arrival"], 9.0)


if __name__ == "__main__":
    unittest.main()
