"""End-of-prefill CalibQuant quantization: per-channel statistics, codes and bit packing (spec sections 2, 3).

One program quantizes DB channels of one KV head of one span, for keys (grid z = 0) or values (z = 1).
Pass 1 finds the per-channel min/max over the span's tokens, pass 2 re-reads the same [tokens, DB] slab
(mostly from L2) and writes the packed codes. The arithmetic is exactly the spec's, in fp32 with IEEE
rounding (no fused multiply-add, IEEE division, round-half-to-even), so a CPU implementation of the same
formulas gives the same bytes:
    alpha = c*min, beta = c*max, sigma = (beta - alpha) / L, z = -alpha / sigma,
    code = rint(clamp(x / sigma + z, 0, L));  a channel with max == min stores sigma = 0 and code 0.
For 1 and 2 bits pass 2 does not divide: code(x) is a monotone function of x (every step is a correctly
rounded monotone operation), so code(x) = #{k in 1..L : x >= t_k} with t_k the smallest fp16 value in
[min, max] whose code is >= k. Each t_k is found once per channel by a binary search over fp16 values that
evaluates the formula above, so the codes are the formula's, bit for bit.
"""
import triton
import triton.language as tl
from triton.language.extra import libdevice

QUANTIZE_PACK_ARGS = [
    ("kin", "*fp16"), ("vin", "*fp16"), ("kcode", "*u8"), ("vcode", "*u8"),
    ("ksig", "*fp32"), ("kalp", "*fp32"), ("vsig", "*fp32"), ("valp", "*fp32"),
    ("qs_tab", "*i64"), ("clip_k", "fp32"), ("clip_v", "fp32"),
]

QS_COLS = tl.constexpr(6)  # qs_tab row: src_off, src_cap, src_t0, tokens, code_off, scale_off


@triton.jit
def _code(x, safe, zero_point, LEVELS: tl.constexpr):
    """The spec's code of fp32 values x: rint(clamp(x / sigma + z, 0, L)), IEEE division, half to even."""
    v = tl.div_rn(x, safe) + zero_point
    v = tl.minimum(tl.maximum(v, 0.0), LEVELS * 1.0)
    return libdevice.rint(v).to(tl.int32)


@triton.jit
def _fp16_key(x16):
    """fp16 value -> int32 key in [0, 65535] that orders like the value (-0 just below +0)."""
    b = x16.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return tl.where(b >= 0x8000, 0xFFFF - b, b + 0x8000)


@triton.jit
def _fp16_of_key(key):
    b = tl.where(key >= 0x8000, key - 0x8000, 0xFFFF - key)
    return b.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _threshold(mn, mx, safe, zero_point, k: tl.constexpr, LEVELS: tl.constexpr):
    """Per channel: the smallest fp16 value t in [mn, mx] with code(t) >= k (+inf if none or degenerate)."""
    lo = _fp16_key(mn.to(tl.float16))
    hi = _fp16_key(mx.to(tl.float16))
    found = (_code(mx, safe, zero_point, LEVELS) >= k) & (mx != mn)
    for _ in tl.static_range(17):  # 2^17 > 65536 keys; once lo == hi the loop is a fixed point
        mid = (lo + hi) // 2
        ge = _code(_fp16_of_key(mid), safe, zero_point, LEVELS) >= k
        hi = tl.where(ge, mid, hi)
        lo = tl.where(ge, lo, mid + 1)
    return tl.where(found, _fp16_of_key(hi), float("inf"))


@triton.jit
def _quantize_block(src, code, sig, alp, clip, src_base, T, code_base, sc_base,
                    D: tl.constexpr, BITS: tl.constexpr, DB: tl.constexpr, BT: tl.constexpr):
    LEVELS: tl.constexpr = (1 << BITS) - 1
    NPB: tl.constexpr = 8 // BITS
    RB: tl.constexpr = D * BITS // 8
    BB: tl.constexpr = DB // NPB
    dd = tl.arange(0, DB)
    r = tl.arange(0, BT)
    # element-wise running min/max, reduced across threads once after the loop
    mn2 = tl.full([BT, DB], float("inf"), tl.float32)
    mx2 = tl.full([BT, DB], float("-inf"), tl.float32)
    for start in range(0, T, BT):
        rows = start + r
        ok = rows < T
        x = tl.load(src + src_base + rows[:, None] * D + dd[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        mn2 = tl.minimum(mn2, tl.where(ok[:, None], x, float("inf")))
        mx2 = tl.maximum(mx2, tl.where(ok[:, None], x, float("-inf")))
    mn = tl.min(mn2, axis=0)
    mx = tl.max(mx2, axis=0)
    # mul_rn: separately rounded products, so beta - alpha is never contracted into an fma
    alpha = libdevice.mul_rn(clip + tl.zeros([DB], tl.float32), mn)
    beta = libdevice.mul_rn(clip + tl.zeros([DB], tl.float32), mx)
    degenerate = mx == mn
    sigma = tl.div_rn(beta - alpha, tl.full([DB], LEVELS, tl.float32))
    safe = tl.where(degenerate, 1.0, sigma)
    zero_point = tl.div_rn(-alpha, safe)
    tl.store(sig + sc_base + dd, tl.where(degenerate, 0.0, sigma))
    tl.store(alp + sc_base + dd, alpha)
    if BITS <= 2:
        t1 = _threshold(mn, mx, safe, zero_point, 1, LEVELS)
        if BITS == 2:
            t2 = _threshold(mn, mx, safe, zero_point, 2, LEVELS)
            t3 = _threshold(mn, mx, safe, zero_point, 3, LEVELS)
    for start in range(0, T, BT):
        rows = start + r
        ok = rows < T
        x = tl.load(src + src_base + rows[:, None] * D + dd[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        if BITS <= 2:
            c = (x >= t1[None, :]).to(tl.int32)
            if BITS == 2:
                c += (x >= t2[None, :]).to(tl.int32) + (x >= t3[None, :]).to(tl.int32)
        else:
            c = _code(x, safe[None, :], zero_point[None, :], LEVELS)
            c = tl.where(degenerate[None, :], 0, c)
        if BITS == 8:
            packed = c
        else:
            sh = BITS * (NPB - 1 - tl.arange(0, NPB))  # first channel of a byte in its most significant bits
            packed = tl.sum(tl.reshape(c, (BT, BB, NPB)) << sh[None, None, :], axis=2)
        tl.store(code + code_base + rows[:, None] * RB + tl.arange(0, BB)[None, :], packed.to(tl.uint8),
                 mask=ok[:, None])


@triton.jit
def quantize_pack(kin, vin, kcode, vcode, ksig, kalp, vsig, valp, qs_tab, clip_k, clip_v,
                  D: tl.constexpr, BITS: tl.constexpr, DB: tl.constexpr, BT: tl.constexpr):
    """grid (num_spans, KVH * D/DB, 2). Input rows of span sp, head kvh: src_off + (kvh*src_cap + src_t0 + t)*D;
    codes [KVH][tokens][D*BITS/8] at code_off; sigma/alpha [KVH][D] at scale_off."""
    sp = tl.program_id(0)
    hb = tl.program_id(1)
    kind = tl.program_id(2)
    NB: tl.constexpr = D // DB
    kvh = hb // NB
    blk = hb % NB
    row = qs_tab + sp * QS_COLS
    src_off = tl.multiple_of(tl.load(row), 16)
    src_cap = tl.load(row + 1)
    src_t0 = tl.load(row + 2)
    tokens = tl.load(row + 3)
    code_off = tl.multiple_of(tl.load(row + 4), 16)
    sc_off = tl.multiple_of(tl.load(row + 5), 16)
    RB: tl.constexpr = D * BITS // 8
    BB: tl.constexpr = DB * BITS // 8
    src_base = src_off + (kvh * src_cap + src_t0) * D + blk * DB
    code_base = code_off + kvh * tokens * RB + blk * BB
    sc_base = sc_off + kvh * D + blk * DB
    T = tokens.to(tl.int32)
    if kind == 0:
        _quantize_block(kin, kcode, ksig, kalp, clip_k, src_base, T, code_base, sc_base, D, BITS, DB, BT)
    else:
        _quantize_block(vin, vcode, vsig, valp, clip_v, src_base, T, code_base, sc_base, D, BITS, DB, BT)
