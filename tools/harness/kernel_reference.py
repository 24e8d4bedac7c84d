"""The spec's arithmetic in NumPy for the kernel harness: the quantizer in IEEE float32 as the kernels evaluate it,
the bit packing, and the random inputs every check draws (tests/test_harness_quantizer.py keeps it equal to Java's)."""
from pathlib import Path

import numpy as np


ROOT = Path(__file__).resolve().parents[2]
U = 2.0 ** -23
TAU_MIN, TAU_MAX = 0.0, 3.0
VISUAL_LENGTHS = [1, 7, 255, 3328, 10000]


# ----------------------------------------------------------------------------------------------------------
# spec arithmetic (numpy)
# ----------------------------------------------------------------------------------------------------------

def clips(bits):
    """(c_K, c_V) of the spec's table."""
    return (0.5, 0.3) if bits == 1 else (1.0, 1.0)


def ref_quantize(x16, bits, clip):
    """x16 [T, D] fp16 -> codes [T, D] (uint8 values), sigma [D], alpha [D]: the spec in IEEE float32."""
    x = x16.astype(np.float32)
    mn, mx = x.min(axis=0), x.max(axis=0)
    c = np.float32(clip)
    alpha = c * mn
    beta = c * mx
    levels = np.float32((1 << bits) - 1)
    sigma = (beta - alpha) / levels
    degenerate = mx == mn
    safe = np.where(degenerate, np.float32(1.0), sigma).astype(np.float32)
    zero_point = (-alpha) / safe
    v = x / safe + zero_point
    v = np.minimum(np.maximum(v, np.float32(0.0)), levels)
    codes = np.rint(v).astype(np.uint8)  # rint rounds half to even
    codes[:, degenerate] = 0
    return codes, np.where(degenerate, np.float32(0.0), sigma).astype(np.float32), alpha.astype(np.float32)


def pack_codes(codes, bits):
    """[..., D] code values -> [..., D*bits/8] bytes, first channel of each byte in its most significant bits."""
    npb = 8 // bits
    c = codes.astype(np.uint32).reshape(codes.shape[:-1] + (codes.shape[-1] // npb, npb))
    shifts = (bits * (npb - 1 - np.arange(npb))).astype(np.uint32)
    return (c << shifts).sum(axis=-1).astype(np.uint8)


def random_kv(rng, kvh, n, d):
    """Random normal fp16 keys (4 outlier channels x8 per head) and values; no exact zeros."""
    k = rng.standard_normal((kvh, n, d)).astype(np.float32)
    for h in range(kvh):
        k[h, :, rng.choice(d, 4, replace=False)] *= 8.0
    v = rng.standard_normal((kvh, n, d)).astype(np.float32)
    k[k == 0] = 1e-3
    v[v == 0] = 1e-3
    return k.astype(np.float16), v.astype(np.float16)


def align16(x):
    return (x + 15) // 16 * 16
