#!/usr/bin/env python3
"""The code thresholds of ptx/kernels/quantize.py (_threshold), emulated in numpy float32 with the kernel's exact
IEEE operations: the bracketed search (a bracket around the formula's inverse, checked with the formula, then
halvings) must give the same fp16 threshold as a search over every fp16 value of [min, max], on random channels and
on the edge cases (degenerate, tiny, near-zero, huge, one-sided ranges), for 1, 2 and 4 levels.

    python3 -m unittest discover -s tools/tests -p 'test_quantize_thresholds.py'
"""
import unittest

try:
    import numpy as np
except ImportError:  # the CI machine may have no numpy: say so, never pass silently
    np = None

f32 = None if np is None else np.float32


def key(x16):
    b = x16.view(np.uint16).astype(np.int64)
    return np.where(b >= 0x8000, 0xFFFF - b, b + 0x8000)


def of_key(k):
    b = np.where(k >= 0x8000, k - 0x8000, 0xFFFF - k).astype(np.uint16)
    return b.view(np.float16).astype(f32)


def code(x, safe, zp, levels):
    with np.errstate(all="ignore"):
        v = (x.astype(f32) / safe).astype(f32) + zp
    v = np.minimum(np.maximum(v, f32(0)), f32(levels))
    return np.rint(v).astype(np.int64)


def scales(mn, mx, clip, levels):
    with np.errstate(all="ignore"):
        alpha = f32(clip) * mn
        beta = f32(clip) * mx
        degenerate = mx == mn
        sigma = (beta - alpha) / f32(levels)
        safe = np.where(degenerate, f32(1), sigma).astype(f32)
        zp = (-alpha / safe).astype(f32)
    return safe, zp


def full_search(mn, mx, safe, zp, k, levels):
    lo, hi = key(mn.astype(np.float16)), key(mx.astype(np.float16))
    found = (code(mx, safe, zp, levels) >= k) & (mx != mn)
    for _ in range(17):
        mid = (lo + hi) // 2
        ge = code(of_key(mid), safe, zp, levels) >= k
        hi, lo = np.where(ge, mid, hi), np.where(ge, lo, mid + 1)
    return np.where(found, of_key(hi), f32(np.inf)), 17


def bracket_search(mn, mx, safe, zp, k, levels):
    """Mirrors _threshold in quantize.py; returns the thresholds and the halvings it ran."""
    lo, hi = key(mn.astype(np.float16)), key(mx.astype(np.float16))
    found = (code(mx, safe, zp, levels) >= k) & (mx != mn)
    with np.errstate(all="ignore"):
        est = (f32(k - 0.5) - zp) * safe
        d = (np.abs(est) + f32(levels) * safe) * f32(2.0 ** -21)
        e_lo = np.minimum(np.maximum(est - d, mn), mx)  # numpy max/min propagate NaN, the kernel's do not:
        e_hi = np.minimum(np.maximum(est + d, mn), mx)
    e_lo = np.where(np.isnan(e_lo), mn, e_lo)           # emulate max.f32 (NaN operand -> the other one)
    e_hi = np.where(np.isnan(e_hi), mn, e_hi)
    b_lo = np.maximum(key(e_lo.astype(f32).astype(np.float16)) - 1, lo)
    b_hi = np.minimum(key(e_hi.astype(f32).astype(np.float16)) + 1, hi)
    use = (code(of_key(b_lo), safe, zp, levels) < k) & (code(of_key(b_hi), safe, zp, levels) >= k)
    lo, hi = np.where(use, b_lo + 1, lo), np.where(use, b_hi, hi)
    width = np.where(found, hi - lo, 0)
    n = int(width.max()).bit_length() if width.size else 0
    for _ in range(n):
        mid = (lo + hi) // 2
        ge = code(of_key(mid), safe, zp, levels) >= k
        hi, lo = np.where(ge, mid, hi), np.where(ge, lo, mid + 1)
    return np.where(found, of_key(hi), f32(np.inf)), n


def random_ranges(rng, n):
    kinds = rng.integers(0, 6, n)
    a = rng.standard_normal(n) * 4
    b = rng.standard_normal(n) * 4
    a = np.where(kinds == 1, rng.standard_normal(n) * 1e-5, a)           # tiny, around zero (subnormal fp16)
    b = np.where(kinds == 1, rng.standard_normal(n) * 1e-5, b)
    a = np.where(kinds == 2, rng.uniform(1000, 60000, n), a)              # huge, one-sided
    b = np.where(kinds == 2, rng.uniform(1000, 60000, n), b)
    a = np.where(kinds == 3, -rng.uniform(0, 60000, n), a)                # wide, across zero
    b = np.where(kinds == 3, rng.uniform(0, 60000, n), b)
    b = np.where(kinds == 4, a + rng.integers(0, 4, n) * 0.001, b)        # degenerate or a few fp16 steps
    a16, b16 = a.astype(np.float16), b.astype(np.float16)
    return np.minimum(a16, b16).astype(f32), np.maximum(a16, b16).astype(f32)


@unittest.skipIf(np is None, "numpy is not installed: the threshold emulation cannot run")
class BracketedThresholdTest(unittest.TestCase):
    def test_same_threshold_as_the_full_search(self):
        rng = np.random.default_rng(20261129)
        for bits in (1, 2, 4):
            levels = (1 << bits) - 1
            for clip in (1.0, 0.95, 0.8, 0.5):
                mn, mx = random_ranges(rng, 200_000)
                safe, zp = scales(mn, mx, clip, levels)
                for k in range(1, min(levels, 3) + 1):
                    want, _ = full_search(mn, mx, safe, zp, k, levels)
                    got, n = bracket_search(mn, mx, safe, zp, k, levels)
                    bad = np.flatnonzero(want.view(np.uint32) != got.view(np.uint32))
                    self.assertEqual(bad.size, 0, f"bits {bits} clip {clip} k {k}: first differing channel "
                                     f"min {mn[bad[:1]]} max {mx[bad[:1]]}: {want[bad[:1]]} vs {got[bad[:1]]}")

    def test_the_bracket_is_narrow_on_typical_channels(self):
        rng = np.random.default_rng(7)
        mn, mx = (rng.standard_normal(4096) * 0.3 - 3).astype(np.float16).astype(f32), \
            (rng.standard_normal(4096) * 0.3 + 3).astype(np.float16).astype(f32)
        safe, zp = scales(mn, mx, 1.0, 1)
        _, n = bracket_search(mn, mx, safe, zp, 1, 1)
        self.assertLessEqual(n, 7, "typical channels should need few halvings, not the full 17")


if __name__ == "__main__":
    unittest.main()
