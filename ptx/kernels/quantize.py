"""End-of-prefill CalibQuant quantization: per-channel statistics, codes and bit packing (spec sections 2, 3).

One launch quantizes every span of the table, keys and values, in one read of the input. The tokens of a
(span, KV head, K or V) group are cut into chunks of TPP*BT rows, one program each (all D channels, so rows are
read whole). A program loads its chunk, folds its per-channel min/max into the group's statistics with atomic max
on order-preserving keys, and waits at a group barrier until every member has arrived; then each member derives the
scales and the code thresholds from the complete statistics itself (one round trip fewer than having one member
publish them: 7 % faster at B = 256 on the H200) and packs its chunk. The host keeps each span's programs below the
number the GPU holds at once, and programs take their index from a ticket in the order they start, so a waiting
program never blocks one that has not started (see quantize_pack). The host zeroes the statistics and counters
(stats, sync: one scratch buffer) on the launch's stream before each launch.

The arithmetic is exactly the spec's, in fp32 with IEEE rounding (no fused multiply-add, IEEE division,
round-half-to-even), so a CPU implementation of the same formulas gives the same bytes:
    alpha = c*min, beta = c*max, sigma = (beta - alpha) / L, z = -alpha / sigma,
    code = rint(clamp(x / sigma + z, 0, L));  a channel with max == min stores sigma = 0 and code 0.
For 1 and 2 bits the packing does not divide: code(x) is a monotone function of x (every step is a correctly
rounded monotone operation), so code(x) = #{k in 1..L : x >= t_k} with t_k the smallest fp16 value in
[min, max] whose code is >= k. Each t_k is found once per channel by a binary search over fp16 values that
evaluates the formula above (from a checked bracket, see _threshold), so the codes are the formula's, bit for bit.
"""
import triton
import triton.language as tl
from triton.language.extra import libdevice

QUANTIZE_PACK_ARGS = [
    ("kin", "*fp16"), ("vin", "*fp16"), ("kcode", "*u8"), ("vcode", "*u8"),
    ("ksig", "*fp32"), ("kalp", "*fp32"), ("vsig", "*fp32"), ("valp", "*fp32"),
    ("qs_tab", "*i64"), ("qc_tab", "*i32"), ("stats", "*i32"), ("sync", "*i32"),
    ("clip_k", "fp32"), ("clip_v", "fp32"), ("KVH", "i32"), ("TPP", "i32"),
]

# qs_tab row: src_off, src_cap, src_t0, tokens, code_off, scale_off, chunk_first, chunk_count
QS_COLS = tl.constexpr(8)
SYNC_HEAD = tl.constexpr(4)  # sync[0]: the ticket counter; then per group:
SYNC_COLS = tl.constexpr(4)  # arrived, three unused (a group's counter alone in its 16 bytes)


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
    """Per channel: the smallest fp16 value t in [mn, mx] with code(t) >= k (+inf if none or degenerate).
    A binary search over fp16 keys that evaluates the formula itself, started from a bracket around its inverse
    x = (k - 1/2 - z) * sigma: fp32 rounding moves the true start by less than 2^-22 (|x| + L sigma), the bracket
    allows twice that, and both of its ends are checked with the formula before it is used; otherwise the search
    covers [mn, mx]. So the result is always the formula's, typically after about 4 halvings instead of 17
    (tools/test_quantize_thresholds.py emulates this against the full search)."""
    lo = _fp16_key(mn.to(tl.float16))
    hi = _fp16_key(mx.to(tl.float16))
    found = (_code(mx, safe, zero_point, LEVELS) >= k) & (mx != mn)
    est = ((k - 0.5) - zero_point) * safe
    d = (tl.abs(est) + LEVELS * safe) * 4.76837158203125e-07  # 2^-21
    b_lo = tl.maximum(_fp16_key(tl.minimum(tl.maximum(est - d, mn), mx).to(tl.float16)) - 1, lo)
    b_hi = tl.minimum(_fp16_key(tl.minimum(tl.maximum(est + d, mn), mx).to(tl.float16)) + 1, hi)
    use = (_code(_fp16_of_key(b_lo), safe, zero_point, LEVELS) < k) & (
        _code(_fp16_of_key(b_hi), safe, zero_point, LEVELS) >= k)
    lo = tl.where(use, b_lo + 1, lo)
    hi = tl.where(use, b_hi, hi)
    width = tl.max(tl.where(found, hi - lo, 0), axis=0)
    for _ in range(32 - libdevice.clz(width)):  # bit length of the widest bracket; lo == hi is a fixed point
        mid = (lo + hi) // 2
        ge = _code(_fp16_of_key(mid), safe, zero_point, LEVELS) >= k
        hi = tl.where(ge, mid, hi)
        lo = tl.where(ge, lo, mid + 1)
    return tl.where(found, _fp16_of_key(hi), float("inf"))


@triton.jit
def _load_tile(src, src_base, t, T, D: tl.constexpr, BT: tl.constexpr):
    """fp16 rows t .. t+BT of a span, rows past the end read as row T-1 (harmless to a min or max, never stored),
    and the mask of the real rows."""
    rows = t + tl.arange(0, BT)
    x = tl.load(src + src_base + tl.minimum(rows, T - 1)[:, None] * D + tl.arange(0, D)[None, :])
    return x, rows < T


@triton.jit
def _min16(a, b):
    return tl.minimum(a, b)


@triton.jit
def _max16(a, b):
    return tl.maximum(a, b)


@triton.jit
def _tile_minmax(x):
    # reduced in fp16 (tl.min would widen to fp32): exact, and no conversion per element
    return tl.reduce(x, 0, _min16), tl.reduce(x, 0, _max16)


@triton.jit
def _store_codes(x, ok, t, code, code_base, th0, th1, th2, D: tl.constexpr, BITS: tl.constexpr,
                 BT: tl.constexpr):
    """Codes of one tile (rows t .. t+BT), packed. th0..th2: per channel, the thresholds (1-2 bits; fp16 values,
    so compared in fp16 exactly as in fp32) or safe, zero point and the degenerate flag (4-8 bits)."""
    LEVELS: tl.constexpr = (1 << BITS) - 1
    NPB: tl.constexpr = 8 // BITS
    RB: tl.constexpr = D * BITS // 8
    if BITS <= 2:
        c = (x >= th0.to(tl.float16)[None, :]).to(tl.int32)
        if BITS == 2:
            c += (x >= th1.to(tl.float16)[None, :]).to(tl.int32) + (x >= th2.to(tl.float16)[None, :]).to(tl.int32)
    else:
        c = _code(x.to(tl.float32), th0[None, :], th1[None, :], LEVELS)
        c = tl.where(th2[None, :] != 0.0, 0, c)
    if BITS == 8:
        packed = c
    else:
        sh = BITS * (NPB - 1 - tl.arange(0, NPB))  # first channel of a byte in its most significant bits
        packed = tl.sum(tl.reshape(c, (BT, RB, NPB)) << sh[None, None, :], axis=2)
    rows = t + tl.arange(0, BT)
    tl.store(code + code_base + rows[:, None] * RB + tl.arange(0, RB)[None, :], packed.to(tl.uint8),
             mask=ok[:, None])


@triton.jit
def _derive_scales(stats_g, clip, D: tl.constexpr, BITS: tl.constexpr):
    """From the group's complete statistics: the sigma and alpha to store, and the code thresholds (see
    _store_codes)."""
    LEVELS: tl.constexpr = (1 << BITS) - 1
    dd = tl.arange(0, D)
    mx = _fp16_of_key(tl.load(stats_g + dd, cache_modifier=".cg") - 1)
    mn = _fp16_of_key(65536 - tl.load(stats_g + D + dd, cache_modifier=".cg"))
    # mul_rn: separately rounded products, so beta - alpha is never contracted into an fma
    alpha = libdevice.mul_rn(clip + tl.zeros([D], tl.float32), mn)
    beta = libdevice.mul_rn(clip + tl.zeros([D], tl.float32), mx)
    degenerate = mx == mn
    sigma = tl.div_rn(beta - alpha, tl.full([D], LEVELS, tl.float32))
    safe = tl.where(degenerate, 1.0, sigma)
    zero_point = tl.div_rn(-alpha, safe)
    if BITS <= 2:
        th0 = _threshold(mn, mx, safe, zero_point, 1, LEVELS)
        th1 = th0
        th2 = th0
        if BITS == 2:
            th1 = _threshold(mn, mx, safe, zero_point, 2, LEVELS)
            th2 = _threshold(mn, mx, safe, zero_point, 3, LEVELS)
    else:
        th0 = safe
        th1 = zero_point
        th2 = degenerate.to(tl.float32)
    return tl.where(degenerate, 0.0, sigma), alpha, th0, th1, th2


@triton.jit
def _group_thresholds(mn, mx, clip, sig, alp, sc_base, stats_g, sync_g, n_members, first, D: tl.constexpr,
                      BITS: tl.constexpr):
    """Folds this chunk's per-channel min/max into the group's, waits until every member has, and returns the group's
    code thresholds (see _store_codes), derived by each member from the complete statistics; the group's first
    chunk stores sigma and alpha."""
    dd = tl.arange(0, D)
    # order-preserving fp16 keys, both as an atomic max (the statistics start at 0)
    tl.atomic_max(stats_g + dd, _fp16_key(mx) + 1, sem="relaxed", scope="gpu")
    tl.atomic_max(stats_g + D + dd, 65536 - _fp16_key(mn), sem="relaxed", scope="gpu")
    tl.debug_barrier()  # every thread's atomics before the release below
    arrived = tl.atomic_add(sync_g, 1, sem="acq_rel", scope="gpu") + 1
    while arrived < n_members:
        arrived = tl.atomic_add(sync_g, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()  # the statistics are read after the acquire that saw every member
    sigma, alpha, th0, th1, th2 = _derive_scales(stats_g, clip, D, BITS)
    if first:
        tl.store(sig + sc_base + dd, sigma)
        tl.store(alp + sc_base + dd, alpha)
    return th0, th1, th2


@triton.jit
def _quantize_chunk(src, code, sig, alp, clip, stats_g, sync_g, src_base, T, t_begin, t_end, code_base, sc_base,
                    n_members, D: tl.constexpr, BITS: tl.constexpr, BT: tl.constexpr):
    if t_end - t_begin <= BT:
        # one tile: read once, held in registers across the group barrier
        x, ok = _load_tile(src, src_base, t_begin, T, D, BT)
        mn, mx = _tile_minmax(x)
        th0, th1, th2 = _group_thresholds(mn, mx, clip, sig, alp, sc_base, stats_g, sync_g, n_members,
                                          t_begin == 0, D, BITS)
        _store_codes(x, ok, t_begin, code, code_base, th0, th1, th2, D, BITS, BT)
    else:
        # several tiles (TPP > 1, as shipped: fewer registers, so more programs resident): the packing pass
        # re-reads them, from L2 (read moments ago)
        mn = tl.full([D], float("inf"), tl.float16)
        mx = tl.full([D], float("-inf"), tl.float16)
        for t in range(t_begin, t_end, BT):
            y, _ = _load_tile(src, src_base, t, T, D, BT)
            ymn, ymx = _tile_minmax(y)
            mn = tl.minimum(mn, ymn)
            mx = tl.maximum(mx, ymx)
        th0, th1, th2 = _group_thresholds(mn, mx, clip, sig, alp, sc_base, stats_g, sync_g, n_members,
                                          t_begin == 0, D, BITS)
        for t in range(t_begin, t_end, BT):
            y, yok = _load_tile(src, src_base, t, T, D, BT)
            _store_codes(y, yok, t, code, code_base, th0, th1, th2, D, BITS, BT)


@triton.jit
def quantize_pack(kin, vin, kcode, vcode, ksig, kalp, vsig, valp, qs_tab, qc_tab, stats, sync,
                  clip_k, clip_v, KVH, TPP, D: tl.constexpr, BITS: tl.constexpr, BT: tl.constexpr):
    """1-D grid of (chunk row, KV head, K or V) programs, one chunk of TPP*BT tokens each; see the module doc."""
    RB: tl.constexpr = D * BITS // 8
    # Programs take their index from a ticket, in the order they actually start, and the members of a group hold
    # consecutive tickets: every earlier group is then complete (running or done), so only the newest group can
    # wait, at most chunk_count - 1 programs, which the host keeps well below the number the GPU holds at once.
    lin = tl.atomic_add(sync, 1, sem="relaxed", scope="gpu")
    sp = tl.load(qc_tab + lin // (2 * KVH))  # span s owns tickets 2*KVH*chunk_first .. 2*KVH*(chunk_first+count)
    row = qs_tab + sp * QS_COLS
    src_off = tl.multiple_of(tl.load(row), 16)
    src_cap = tl.load(row + 1)
    src_t0 = tl.load(row + 2)
    tokens = tl.load(row + 3)
    code_off = tl.multiple_of(tl.load(row + 4), 16)
    sc_off = tl.multiple_of(tl.load(row + 5), 16)
    chunk_first = tl.load(row + 6)
    n_members = tl.load(row + 7).to(tl.int32)
    T = tokens.to(tl.int32)
    # group-major: the members of one (span, KV head, K or V) group hold consecutive tickets
    local = (lin - 2 * KVH * chunk_first).to(tl.int32)
    hk = local // n_members
    kvh = hk // 2
    kind = hk % 2
    t_begin = (local % n_members) * TPP * BT
    t_end = tl.minimum(t_begin + TPP * BT, T)
    src_base = src_off + (kvh * src_cap + src_t0) * D
    code_base = code_off + kvh * tokens * RB
    sc_base = sc_off + kvh * D
    g = sp * (2 * KVH) + hk
    stats_g = stats + g * (2 * D)
    sync_g = sync + SYNC_HEAD + g * SYNC_COLS
    if kind == 0:
        _quantize_chunk(kin, kcode, ksig, kalp, clip_k, stats_g, sync_g, src_base, T, t_begin, t_end,
                        code_base, sc_base, n_members, D, BITS, BT)
    else:
        _quantize_chunk(vin, vcode, vsig, valp, clip_v, stats_g, sync_g, src_base, T, t_begin, t_end,
                        code_base, sc_base, n_members, D, BITS, BT)
