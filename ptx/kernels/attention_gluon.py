"""1-bit CalibQuant decode attention in Gluon, Triton's explicit-layout dialect (same tables and arguments as
attention.py, so the Java launch code is shared; see ptx/README.md).

Why Gluon: in plain Triton the compiler picks the register layouts, and turning packed bits into tensor-core
operands went through shared memory element by element (about 39 SM cycles per token and KV head, where the
byte floor allows 3). Here every layout is chosen so that the bits a thread needs for its mma.sync fragments are
exactly the bits of the one 32-bit word (keys) or 16-bit chunk (values) it loads, and a fragment register (two
fp16) is made from them with one shift-free AND:

  * masking bit i (i < 8) of both 16-bit halves of a register and reading each half as fp16 gives exactly
    bit * 2^(i - 24) (an fp16 subnormal), so a pair of codes costs one LOP; the power of two is folded into
    the other operand (keys: the weights; values: undone per channel at the end);
  * the order of the reduction dimension of a product is free, so K (channels, for the scores) and the rows of
    O^T (channels, for the values) are permuted to follow the bits of the loaded words; the weights and the
    output channels use the same permutations (_key_channel, _value_channel).

One program is one warp: no cross-warp reduction or barrier inside the loop; a work item is a chunk of the
full-precision block or of one visual span of one (sequence, KV head), exactly as in attention.py.

Products (m16n8k16, fp16 in, fp32 accumulate):
  scores   S[t, n]   = sum_k A_K[t, k] W[k, n]     t: BN tokens, k: D channels (permuted), n = 2*slot + hi/lo
  values   O^T[r, n] = sum_t A_V[r, t] P[t, n]     r: D channels (permuted), P = hi/lo pairs of the softmax weights
Operands that are not exact in fp16 (q*sigma_K, p) travel as an fp16 hi/lo pair in two columns, as in
attention.py, so each is carried to ~2^-22 relative. Softmax: the calibrated modes know the maximum logit before
the loop (spec section 4); without calibration a first pass over the item's keys finds it, so no running maximum
and no rescaling is needed in the loop.
"""
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

LOG2E = gl.constexpr(1.4426950408889634)
NEG_BIG = gl.constexpr(-1.0e30)
P_SCALE = gl.constexpr(1024.0)
SEQ_COLS = gl.constexpr(6)  # seq_tab row: fp_off, fp_len, fp_cap, q_off, work_first, work_count
SPAN_COLS = gl.constexpr(5)  # span_tab row: code_off, tokens, scale_off, mm_first, mm_count
WORK_COLS = gl.constexpr(4)  # work_tab row: seq, span (-1: full-precision block), t0, tn
MM_COLS = gl.constexpr(4)  # mm_tab row: seq, span, t0, tn
RING = gl.constexpr(8)  # mode 3: code-row tiles in the cp.async ring (7 in flight while one is computed)
MERGE_ITEMS = gl.constexpr(4)  # partials the merging program loads per round trip
SLOT_INTS = gl.constexpr(32)  # mode 3: int32 per (span, KV head) rendezvous slot in mm_buf (after a header slot)

CALIBQUANT_MINMAX_ARGS = [
    ("q", "*fp16"), ("kcode", "*u8"), ("ksig", "*fp32"), ("kalp", "*fp32"),
    ("seq_tab", "*i64"), ("span_tab", "*i64"), ("mm_tab", "*i64"), ("mm_buf", "*fp32"),
    ("KVH", "i32"), ("G", "i32"), ("sm_scale", "fp32"),
]

CALIBQUANT_DECODE_ARGS = [
    ("q", "*fp16"), ("kfp", "*fp16"), ("vfp", "*fp16"), ("kcode", "*u8"), ("vcode", "*u8"),
    ("ksig", "*fp32"), ("kalp", "*fp32"), ("vsig", "*fp32"), ("valp", "*fp32"),
    ("seq_tab", "*i64"), ("span_tab", "*i64"), ("work_tab", "*i64"), ("mm_buf", "*fp32"),
    ("part_ml", "*fp32"), ("part_acc", "*fp32"), ("counters", "*i32"), ("out", "*fp32"),
    ("KVH", "i32"), ("G", "i32"), ("sm_scale", "fp32"), ("tau_min", "fp32"), ("tau_max", "fp32"),
    ("clamp", "i32"),
]

# the same kernel with a timeline: int64 per program (ticket order) in trace, see _stamp; harness only, never shipped
CALIBQUANT_DECODE_TRACED_ARGS = CALIBQUANT_DECODE_ARGS + [("trace", "*i64")]
TRACE_COLS = gl.constexpr(10)  # trace row (ticket order): SM id, tokens, then %globaltimer (ns) at: start, tables
# read, key weights ready, keys done (full-precision items: all done), rendezvous passed, values done, arrival counted,
# merge stored; 0 where a phase does not happen

# ------------------------------------------------------------------------------------------------------------
# layouts (one warp)
# ------------------------------------------------------------------------------------------------------------


_MMA = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
MMA = gl.constexpr(_MMA)  # m16n8k16 accumulators
OP_A = gl.constexpr(gl.DotOperandLayout(operand_index=0, parent=_MMA, k_width=2))
OP_B = gl.constexpr(gl.DotOperandLayout(operand_index=1, parent=_MMA, k_width=2))
# [BN, NQ, 4] key words: token rows over lanes 2-4 (and registers), the 4 words of a row over lanes 0-1, the NQ bit
# pairs in registers. After the join with the pair dimension and the reshape to [BN, D], lanes hold exactly the
# rows and K positions of an mma A fragment, so the conversion to OP_A only renames registers.
KEY_WORDS = gl.constexpr(gl.BlockedLayout([1, 1, 1], [8, 1, 4], [1, 1, 1], [2, 1, 0]))
# [BN, 8] value chunks: token bit 0 in registers, token bits 1-2 over lanes 0-1, the 8 chunks of a row over lanes 2-4
VALUE_CHUNKS = gl.constexpr(gl.BlockedLayout([2, 1], [4, 8], [1, 1], [0, 1]))
# [BN/2, 8, NP] value bits: token pairs over lanes 0-1, chunks over lanes 2-4, the NP channel bits of a chunk in
# registers (the A fragment of O^T = V^T P after the reshape to [D, BN])
VALUE_BITS = gl.constexpr(gl.BlockedLayout([1, 1, 1], [4, 8, 1], [1, 1, 1], [2, 0, 1]))
# [BN, HS] per-slot scores: slots over lanes 0-1 (and a register), tokens over lanes 2-4 and registers, as in the
# mma accumulator once hi and lo are added
SCORES = gl.constexpr(gl.BlockedLayout([1, 1], [8, 4], [1, 1], [1, 0]))
# [32]: one element per lane
LANES = gl.constexpr(gl.BlockedLayout([1], [32], [1], [0]))
# [D, HS] (or [D, N]): one channel row per lane and register
ROWS = gl.constexpr(gl.BlockedLayout([1, 1], [32, 1], [1, 1], [1, 0]))
# [BN, D] fp16 full-precision rows, 16 bytes per thread and load
TILE16 = gl.constexpr(gl.BlockedLayout([1, 8], [4, 8], [1, 1], [1, 0]))
# shared memory without swizzling: mode 3's code ring and kept scores are read back in the layouts that wrote them
PLAIN2 = gl.constexpr(gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))


# ------------------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------------------


@gluon.jit
def _table_row4(row):
    """A work_tab or mm_tab row: sequence, span (-1: full-precision block), first token, token count."""
    return gl.load(row), gl.load(row + 1), gl.load(row + 2), gl.load(row + 3).to(gl.int32)


@gluon.jit
def _span_row(span_tab, span):
    """A span_tab row's code offset, token count and scale offset."""
    srow = span_tab + span * SPAN_COLS
    return gl.multiple_of(gl.load(srow), 16), gl.load(srow + 1), gl.multiple_of(gl.load(srow + 2), 16)


@gluon.jit
def _pow2(e):
    """2^e as fp32, exactly (e: int32, -126 <= e <= 127)."""
    return ((e + 127) << 23).to(gl.float32, bitcast=True)


@gluon.jit
def _now(dep):
    """Timeline only: [32] %globaltimer (ns), read once the int32 scalar dep is known; the membar first waits for
    the program's memory operations so far."""
    x = gl.arange(0, 32, layout=LANES) * 0 + dep
    return gl.inline_asm_elementwise("{ .reg .u32 z; membar.cta; mov.b32 z, $1; mov.u64 $0, %globaltimer; }",
                                     "=l,r", [x], dtype=gl.int64, is_pure=False, pack=1)


@gluon.jit
def _put(trace, row, col: gl.constexpr, t):
    """Timeline only: trace[row, col] = t (a [32] tensor of equal lanes)."""
    lane = gl.arange(0, 32, layout=LANES)
    gl.store(trace + row.to(gl.int64) * TRACE_COLS + col + lane * 0, t, mask=lane == 0)


@gluon.jit
def _stamp(trace, row, col: gl.constexpr, dep, TRACE: gl.constexpr):
    """Timeline only (TRACE): trace[row, col] = the time once dep (an int32 scalar the phase produced) is known."""
    if TRACE:
        _put(trace, row, col, _now(dep))


@gluon.jit
def _hilo_cols(x, R: gl.constexpr, HS: gl.constexpr, SCALE: gl.constexpr):
    """[R, HS] fp32 -> [R, 2*HS] fp16 with x*SCALE ~= col(2s) + col(2s+1)."""
    xs = x * SCALE
    hi = xs.to(gl.float16)
    lo = (xs - hi.to(gl.float32)).to(gl.float16)
    return gl.reshape(gl.join(hi, lo), [R, 2 * HS])


@gluon.jit
def _pair_sum(x, R: gl.constexpr, HS: gl.constexpr, layout: gl.constexpr):
    """[R, 2*HS] -> [R, HS] in `layout`: adds the hi and lo columns of each slot."""
    hi, lo = gl.split(gl.reshape(x, [R, HS, 2]))
    return gl.convert_layout(hi + lo, layout)


@gluon.jit
def _key_channel(k, D: gl.constexpr):
    """Channel held at K position k of the score product (k = 8q + 2c + h: word c, bit pair q, half h)."""
    CB: gl.constexpr = D // 32
    NJ: gl.constexpr = CB // 2
    q = k // 8
    c = (k // 2) % 4
    h = k % 2
    return 8 * (CB * c + NJ * h + q // 8) + 7 - q % 8


@gluon.jit
def _value_channel(r, D: gl.constexpr):
    """Channel held at row r of O^T (r = 8p + g: chunk g, bit p of the chunk)."""
    VB: gl.constexpr = D // 64
    p = r // 8
    g = r % 8
    return 8 * (VB * g + p // 8) + 7 - p % 8


@gluon.jit
def _load_query(q, q_off, hq0, G, D: gl.constexpr, HS: gl.constexpr):
    """[D, HS] fp32 query of the KV head's slots (0 for slots >= G), one channel row per lane."""
    L: gl.constexpr = ROWS
    d = gl.arange(0, D, layout=gl.SliceLayout(1, L))
    s = gl.arange(0, HS, layout=gl.SliceLayout(0, L))
    ptr = q + q_off + (hq0 + s)[None, :] * D + d[:, None]
    return gl.load(ptr, mask=(s < G)[None, :], other=0.0).to(gl.float32)


@gluon.jit
def _key_weight_half(q, q_off, hq0, G, ksig, sc_base, sm_scale, k0: gl.constexpr, D: gl.constexpr,
                     HS: gl.constexpr):
    """q * sigma_K / sqrt(D) at the K positions k0 .. k0 + D/2 of the score product ([D/2, HS], one row per lane),
    and the bit index i of each position's subnormal code."""
    L: gl.constexpr = ROWS
    k = k0 + gl.arange(0, D // 2, layout=gl.SliceLayout(1, L))
    s = gl.arange(0, HS, layout=gl.SliceLayout(0, L))
    ch = _key_channel(k, D)
    qk = gl.load(q + q_off + (hq0 + s)[None, :] * D + ch[:, None], mask=(s < G)[None, :], other=0.0).to(gl.float32)
    return qk * (gl.load(ksig + sc_base + ch) * sm_scale)[:, None], (k // 8) % 8


@gluon.jit
def _key_weights(q, q_off, hq0, G, ksig, kalp, sc_base, sm_scale, D: gl.constexpr, HS: gl.constexpr):
    """Post-scaling weights q * sigma_K / sqrt(D) as two B operands [D/2, 2*HS] (the two halves of K, in
    _key_channel order; each weight times 2^(24 - i - e) for the subnormal code of bit i and a per-program 2^-e
    that keeps every weight below 2^15), the factor 2^e that undoes it, and the bias q . alpha_K / sqrt(D) per
    slot. Two halves give two independent mma chains per tile."""
    L: gl.constexpr = ROWS
    w0, i0 = _key_weight_half(q, q_off, hq0, G, ksig, sc_base, sm_scale, 0, D, HS)
    w1, i1 = _key_weight_half(q, q_off, hq0, G, ksig, sc_base, sm_scale, D // 2, D, HS)
    d = gl.arange(0, D, layout=gl.SliceLayout(1, L))
    s = gl.arange(0, HS, layout=gl.SliceLayout(0, L))
    qd = gl.load(q + q_off + (hq0 + s)[None, :] * D + d[:, None], mask=(s < G)[None, :], other=0.0).to(gl.float32)
    bias = gl.sum(qd * gl.load(kalp + sc_base + d)[:, None], axis=0) * sm_scale
    wmax = gl.maximum(gl.max(gl.max(gl.abs(w0), axis=1), axis=0), gl.max(gl.max(gl.abs(w1), axis=1), axis=0))
    e = gl.ceil(gl.log2(gl.maximum(wmax, 1e-30))).to(gl.int32) + 9
    wb0 = gl.convert_layout(_hilo_cols(w0 * _pow2(24 - i0 - e)[:, None], D // 2, HS, 1.0), OP_B)
    wb1 = gl.convert_layout(_hilo_cols(w1 * _pow2(24 - i1 - e)[:, None], D // 2, HS, 1.0), OP_B)
    return wb0, wb1, _pow2(e), gl.convert_layout(bias, gl.SliceLayout(0, SCORES))


@gluon.jit
def _key_words(kcode, row0, start, tn, BN: gl.constexpr, D: gl.constexpr):
    """[BN, 4] int32: the words of token rows start .. start+BN of a span's key codes (rows >= tn read as 0);
    for D = 64 each 16-bit chunk is spread to bits 0-7 and 16-23."""
    RB: gl.constexpr = D // 8
    CB: gl.constexpr = D // 32
    LW: gl.constexpr = gl.SliceLayout(1, KEY_WORDS)
    t = gl.arange(0, BN, layout=gl.SliceLayout(1, LW))
    c = gl.arange(0, 4, layout=gl.SliceLayout(0, LW))
    rows = start + t
    off = row0 + rows[:, None] * RB + (c * CB)[None, :]
    if CB == 4:
        w = gl.load((kcode + off).to(gl.pointer_type(gl.int32)), mask=(rows < tn)[:, None], other=0)
    else:
        w = gl.load((kcode + off).to(gl.pointer_type(gl.uint16)), mask=(rows < tn)[:, None], other=0).to(gl.int32)
        w = w | (w << 8)  # byte 0 in bits 0-7, byte 1 in bits 16-23
    return w


@gluon.jit
def _key_operand(w, q0: gl.constexpr, BN: gl.constexpr, D: gl.constexpr):
    """A operand [BN, D/2] of the score product from the words: bit pairs q0 .. q0 + NQ/2 (K positions
    8*q0 .. 8*q0 + D/2)."""
    NQ2: gl.constexpr = D // 16
    L3: gl.constexpr = KEY_WORDS
    qi = q0 + gl.arange(0, NQ2, layout=gl.SliceLayout(0, gl.SliceLayout(2, L3)))
    q3 = gl.expand_dims(gl.expand_dims(qi, 0), 2)
    pair = (gl.expand_dims(w, 1) >> (8 * (q3 // 8))) & (0x00010001 << (q3 % 8))
    lo = pair.to(gl.int16).to(gl.float16, bitcast=True)
    hi = (pair >> 16).to(gl.int16).to(gl.float16, bitcast=True)
    return gl.convert_layout(gl.reshape(gl.join(lo, hi), [BN, D // 2]), OP_A)


@gluon.jit
def _value_chunks(vcode, row0, start, tn, BN: gl.constexpr, D: gl.constexpr):
    """[BN, 8] int32: the 16-bit (D = 128) or 8-bit (D = 64) chunk g of token rows start .. start+BN."""
    RB: gl.constexpr = D // 8
    VB: gl.constexpr = D // 64
    LC: gl.constexpr = VALUE_CHUNKS
    t = gl.arange(0, BN, layout=gl.SliceLayout(1, LC))
    g = gl.arange(0, 8, layout=gl.SliceLayout(0, LC))
    rows = start + t
    off = row0 + rows[:, None] * RB + (g * VB)[None, :]
    if VB == 2:
        v = gl.load((vcode + off).to(gl.pointer_type(gl.uint16)), mask=(rows < tn)[:, None], other=0)
    else:
        v = gl.load(vcode + off, mask=(rows < tn)[:, None], other=0)
    return v.to(gl.int32)


@gluon.jit
def _value_operand(v, BN: gl.constexpr, D: gl.constexpr):
    """A operand [D, BN] of O^T = V^T P from the chunks: rows in _value_channel order, tokens as columns."""
    NP: gl.constexpr = D // 8
    v0, v1 = gl.split(gl.permute(gl.reshape(v, [BN // 2, 2, 8]), [0, 2, 1]))
    L3: gl.constexpr = VALUE_BITS
    x = gl.convert_layout(v0 | (v1 << 16), gl.SliceLayout(2, L3))  # tokens 2j and 2j+1 in the two halves
    pi = gl.arange(0, NP, layout=gl.SliceLayout(0, gl.SliceLayout(1, L3)))
    p3 = gl.expand_dims(gl.expand_dims(pi, 0), 1)
    pair = (gl.expand_dims(x, 2) >> (8 * (p3 // 8))) & (0x00010001 << (p3 % 8))
    lo = pair.to(gl.int16).to(gl.float16, bitcast=True)
    hi = (pair >> 16).to(gl.int16).to(gl.float16, bitcast=True)
    xb = gl.permute(gl.join(lo, hi), [2, 1, 0, 3])  # [NP, 8, BN/2, 2]
    return gl.convert_layout(gl.reshape(xb, [D, BN]), OP_A)


@gluon.jit
def _raw_scores(w, start, tn, wb0, wb1, e2, bias, BN: gl.constexpr, D: gl.constexpr, HS: gl.constexpr):
    """Visual scores s_V (natural-log units, 1/sqrt(D) applied) [BN, HS] of the tile whose key words are w, and
    its row mask."""
    z = gl.zeros([BN, 2 * HS], gl.float32, layout=MMA)
    s = mma_v2(_key_operand(w, 0, BN, D), wb0, z) + mma_v2(_key_operand(w, D // 16, BN, D), wb1, z)
    raw = _pair_sum(s, BN, HS, SCORES) * e2 + gl.expand_dims(bias, 0)
    rows = start + gl.arange(0, BN, layout=gl.SliceLayout(1, SCORES))
    return raw, rows < tn


@gluon.jit
def _span_minmax(kcode, row0, tn, wb0, wb1, e2, bias, BN: gl.constexpr, D: gl.constexpr, HS: gl.constexpr):
    """Min and max over tokens 0 .. tn of the raw visual score, per slot ([HS] each). The next tile's words are
    loaded before this tile is computed, so the load latency overlaps the math."""
    LS: gl.constexpr = SCORES
    mn = gl.full([BN, HS], float("inf"), gl.float32, layout=LS)
    mx = gl.full([BN, HS], float("-inf"), gl.float32, layout=LS)
    w = _key_words(kcode, row0, 0, tn, BN, D)
    for start in range(0, tn, BN):
        w_next = _key_words(kcode, row0, start + BN, tn, BN, D)
        raw, rmask = _raw_scores(w, start, tn, wb0, wb1, e2, bias, BN, D, HS)
        mn = gl.minimum(mn, gl.where(gl.expand_dims(rmask, 1), raw, float("inf")))
        mx = gl.maximum(mx, gl.where(gl.expand_dims(rmask, 1), raw, float("-inf")))
        w = w_next
    return gl.min(mn, axis=0), gl.max(mx, axis=0)


@gluon.jit
def _calibration(gam, dlt, tau_min, tau_max, clamp):
    """Softmax constants of a calibrated span from the min (gam) and max (dlt) of its raw scores: the maximum
    logit m (log2 units) and p = exp2((s - ref) * a2 + c2) = exp(g(s) - max g)."""
    # spec section 4: g(x) = (x - gam) / (dlt - gam + 1e-8) * ((dlt - tau_max) - (gam + tau_min)) + gam + tau_min
    a = ((dlt - tau_max) - (gam + tau_min)) / (dlt - gam + 1e-8)
    a = gl.where(clamp != 0, gl.maximum(a, 0.0), a)
    top = gl.maximum((dlt - gam) * a, 0.0)  # g is affine: its max over [gam, dlt] is gam + tau_min + top
    return (gam + tau_min + top) * LOG2E, a * LOG2E, -top * LOG2E, gam


@gluon.jit
def _order_key(x):
    """fp32 -> uint32 key with the same order (0 below every key): an atomic max over keys is a max over x."""
    b = x.to(gl.int32, bitcast=True)
    return (b ^ ((b >> 31) | (-2147483647 - 1))).to(gl.uint32, bitcast=True)


@gluon.jit
def _of_order_key(k):
    b = k.to(gl.int32, bitcast=True)
    return gl.where(b < 0, b ^ (-2147483647 - 1), ~b).to(gl.float32, bitcast=True)


@gluon.jit
def _issue_tile(ring, j, nk, kcode, vcode, row0, tn, BN: gl.constexpr, D: gl.constexpr):
    """Queues (cp.async, one group) item j of a fused item's stream of code tiles into ring slot j % RING: key
    tile j for j < nk, else value tile j - nk. Rows at or past tn, and tiles past the end, are zero-filled
    without being read."""
    RB: gl.constexpr = D // 8
    LR: gl.constexpr = gl.BlockedLayout([1, RB], [32, 1], [1, 1], [1, 0])
    tile = gl.where(j < nk, j, j - nk)
    rows = tile * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, LR))
    off = row0 + gl.expand_dims(rows, 1) * RB + gl.expand_dims(gl.arange(0, RB, layout=gl.SliceLayout(0, LR)), 0)
    mask = gl.expand_dims(rows < tn, 1)
    dst = ring.index(j % RING)
    if j < nk:
        async_copy.async_copy_global_to_shared(dst, kcode + off, mask=mask)
    else:
        async_copy.async_copy_global_to_shared(dst, vcode + off, mask=mask)
    async_copy.commit_group()


@gluon.jit
def _ring_key_words(ring, slot, BN: gl.constexpr, D: gl.constexpr):
    """The [BN, 4] key words of a ring slot, as _key_words returns them."""
    LW: gl.constexpr = gl.SliceLayout(1, KEY_WORDS)
    if D == 128:
        w = ring.index(slot)._reinterpret(gl.int32, [BN, 4], PLAIN2).load(LW)
    else:
        w = ring.index(slot)._reinterpret(gl.uint16, [BN, 4], PLAIN2).load(LW).to(gl.int32)
        w = w | (w << 8)  # byte 0 in bits 0-7, byte 1 in bits 16-23
    return w


@gluon.jit
def _ring_value_chunks(ring, slot, BN: gl.constexpr, D: gl.constexpr):
    """The [BN, 8] value chunks of a ring slot, as _value_chunks returns them."""
    if D == 128:
        v = ring.index(slot)._reinterpret(gl.uint16, [BN, 8], PLAIN2).load(VALUE_CHUNKS)
    else:
        v = ring.index(slot).load(VALUE_CHUNKS)
    return v.to(gl.int32)


@gluon.jit
def _finish_rows(o2, l_i, scale_rows, sig, alp, D: gl.constexpr, HS: gl.constexpr):
    """O^T [D, 2*HS] accumulator -> o [D, HS]: hi + lo, times the row's undo factor, then sigma/alpha of values."""
    L: gl.constexpr = ROWS
    o = _pair_sum(gl.convert_layout(o2, L), D, HS, L)
    o = o * (scale_rows * (1.0 / P_SCALE) * sig)[:, None] + alp[:, None] * gl.expand_dims(
        gl.convert_layout(l_i, gl.SliceLayout(0, L)), 0)
    return o


# ------------------------------------------------------------------------------------------------------------
# work items
# ------------------------------------------------------------------------------------------------------------


@gluon.jit
def _visual_item(q, q_off, kcode, vcode, ksig, kalp, vsig, valp, span_tab, mm_buf, span, kvh, t0, tn,
                 hq0, G, Hq, sm_scale, tau_min, tau_max, clamp,
                 D: gl.constexpr, MM_MODE: gl.constexpr, BN: gl.constexpr, HS: gl.constexpr):
    """Softmax partial (m in log2 units [HS], l [HS], o [D, HS], channel of each row of o) of tokens t0 .. t0+tn
    of a visual span."""
    RB: gl.constexpr = D // 8
    LS: gl.constexpr = SCORES
    L: gl.constexpr = ROWS
    srow = span_tab + span * SPAN_COLS
    code_off, tokens, sc_off = _span_row(span_tab, span)
    row0 = code_off + (kvh * tokens + t0) * RB
    sc_base = sc_off + kvh * D
    wb0, wb1, e2, bias = _key_weights(q, q_off, hq0, G, ksig, kalp, sc_base, sm_scale, D, HS)
    if MM_MODE == 1:
        # gamma/delta of the whole span from the calibquant_minmax partials
        s = gl.arange(0, HS, layout=gl.SliceLayout(0, LS))
        mm_first = gl.load(srow + 3).to(gl.int32)
        mm_count = gl.load(srow + 4).to(gl.int32)
        gam = gl.full([HS], float("inf"), gl.float32, layout=gl.SliceLayout(0, LS))
        dlt = gl.full([HS], float("-inf"), gl.float32, layout=gl.SliceLayout(0, LS))
        for c in range(mm_first, mm_first + mm_count):
            mrow = mm_buf + (c * Hq + hq0 + s) * 2
            gam = gl.minimum(gam, gl.load(mrow, mask=s < G, other=0.0))
            dlt = gl.maximum(dlt, gl.load(mrow + 1, mask=s < G, other=0.0))
    else:
        # mode 2: this item is the whole span; mode 0: its own maximum. A first pass over its keys (L2 hits).
        gam, dlt = _span_minmax(kcode, row0, tn, wb0, wb1, e2, bias, BN, D, HS)
    if MM_MODE == 0:
        a2 = gl.full([HS], LOG2E, gl.float32, layout=gl.SliceLayout(0, LS))
        c2 = gl.zeros([HS], gl.float32, layout=gl.SliceLayout(0, LS))
        ref = dlt  # p = exp(s - max)
        m_i = dlt * LOG2E
    else:
        m_i, a2, c2, ref = _calibration(gam, dlt, tau_min, tau_max, clamp)
    l_acc = gl.zeros([BN, HS], gl.float32, layout=LS)
    acc = gl.zeros([D, 2 * HS], gl.float32, layout=MMA)
    w = _key_words(kcode, row0, 0, tn, BN, D)
    v = _value_chunks(vcode, row0, 0, tn, BN, D)
    for start in range(0, tn, BN):
        w_next = _key_words(kcode, row0, start + BN, tn, BN, D)
        v_next = _value_chunks(vcode, row0, start + BN, tn, BN, D)
        raw, rmask = _raw_scores(w, start, tn, wb0, wb1, e2, bias, BN, D, HS)
        p = gl.exp2((raw - gl.expand_dims(ref, 0)) * gl.expand_dims(a2, 0) + gl.expand_dims(c2, 0))
        p = gl.where(gl.expand_dims(rmask, 1), p, 0.0)
        l_acc += p
        pb = gl.convert_layout(_hilo_cols(p, BN, HS, P_SCALE), OP_B)
        acc = mma_v2(_value_operand(v, BN, D), pb, acc)
        w = w_next
        v = v_next
    l_i = gl.sum(l_acc, axis=0)
    r = gl.arange(0, D, layout=gl.SliceLayout(1, L))
    dch = _value_channel(r, D)
    undo = _pow2(24 - (r // 8) % 8)  # the subnormal code of bit p is 2^(p - 24)
    o = _finish_rows(acc, l_i, undo, gl.load(vsig + sc_base + dch), gl.load(valp + sc_base + dch), D, HS)
    if MM_MODE == 0:
        # an empty item (tn = 0) has no maximum: keep every rescale factor of the merge finite
        m_i = gl.maximum(m_i, NEG_BIG)
    return gl.convert_layout(m_i, gl.SliceLayout(0, L)), gl.convert_layout(l_i, gl.SliceLayout(0, L)), o, dch


@gluon.jit
def _visual_item_fused(q, q_off, kcode, vcode, ksig, kalp, vsig, valp, span_tab, slots, ring, scores, span, kvh,
                       t0, tn, hq0, G, KVH, sm_scale, tau_min, tau_max, clamp, trace, trow,
                       D: gl.constexpr, BN: gl.constexpr, HS: gl.constexpr, TRACE: gl.constexpr):
    """Mode 3: softmax partial of tokens t0 .. t0+tn (tn <= CH) of a calibrated visual span in one launch, reading
    every code once. Phase 1 computes the raw scores of the item's keys into shared memory and folds their min and
    max into the span's rendezvous slot; the span's items (mm_count of span_tab, consecutive tickets) wait there
    for each other; phase 2 calibrates the kept scores and runs the values. Code tiles stream through a cp.async
    ring (RING - 1 tiles in flight); the first value tiles land while the program waits."""
    RB: gl.constexpr = D // 8
    LS: gl.constexpr = SCORES
    L: gl.constexpr = ROWS
    code_off, tokens, sc_off = _span_row(span_tab, span)
    members = gl.load(span_tab + span * SPAN_COLS + 4).to(gl.int32)
    row0 = code_off + (kvh * tokens + t0) * RB
    sc_base = sc_off + kvh * D
    nk = gl.cdiv(tn, BN)
    for j in gl.static_range(RING - 1):
        _issue_tile(ring, j, nk, kcode, vcode, row0, tn, BN, D)
    wb0, wb1, e2, bias = _key_weights(q, q_off, hq0, G, ksig, kalp, sc_base, sm_scale, D, HS)
    _stamp(trace, trow, 4, e2.to(gl.int32, bitcast=True), TRACE)
    mn = gl.full([BN, HS], float("inf"), gl.float32, layout=LS)
    mx = gl.full([BN, HS], float("-inf"), gl.float32, layout=LS)
    for i in range(nk):
        async_copy.wait_group(RING - 2)
        _barrier()  # every lane's copies of tile i have landed; every lane is done with the slot refilled below
        _issue_tile(ring, i + RING - 1, nk, kcode, vcode, row0, tn, BN, D)
        w = _ring_key_words(ring, i % RING, BN, D)
        raw, rmask = _raw_scores(w, i * BN, tn, wb0, wb1, e2, bias, BN, D, HS)
        scores.index(i).store(raw)
        mn = gl.minimum(mn, gl.where(gl.expand_dims(rmask, 1), raw, float("inf")))
        mx = gl.maximum(mx, gl.where(gl.expand_dims(rmask, 1), raw, float("-inf")))
    if TRACE:
        _stamp(trace, trow, 5, gl.max(gl.max(mx, axis=1), axis=0).to(gl.int32, bitcast=True), TRACE)
    # rendezvous of the span's items: max of the maxima and of the negated minima, as order-preserving keys
    s = gl.arange(0, HS, layout=gl.SliceLayout(0, LS))
    on = s < G
    slot = slots + (span * KVH + kvh + 1) * SLOT_INTS
    keys = slot.to(gl.pointer_type(gl.uint32))
    gl.atomic_max(keys + 2 + s, _order_key(gl.max(mx, axis=0)), mask=on, sem="relaxed", scope="gpu")
    gl.atomic_max(keys + 2 + HS + s, _order_key(-gl.min(mn, axis=0)), mask=on, sem="relaxed", scope="gpu")
    _barrier()  # every lane's atomics before the release below
    arrived = gl.atomic_add(slot, 1, sem="acq_rel", scope="gpu") + 1
    while arrived < members:
        arrived = gl.atomic_add(slot, 0, sem="acquire", scope="gpu")
    dlt = gl.where(on, _of_order_key(gl.load(keys + 2 + s, mask=on, other=0, cache_modifier=".cg")), 0.0)
    gam = gl.where(on, -_of_order_key(gl.load(keys + 2 + HS + s, mask=on, other=0, cache_modifier=".cg")), 0.0)
    _barrier()  # every lane has read the slot before this program counts as gone
    # release (this program's reads of the slot come before its count), no acquire, and lane 0's own result (a
    # scalar atomic would be broadcast at once, waiting for the round trip): nothing reads it until after the value
    # loop, so the round trip overlaps the loop
    lane = gl.arange(0, 32, layout=LANES)
    left_v = gl.atomic_add(slot + 1 + lane, gl.full([32], 1, gl.int32, layout=LANES), mask=lane == 0,
                           sem="release", scope="gpu")
    if TRACE:
        _stamp(trace, trow, 6, gl.max(gam, axis=0).to(gl.int32, bitcast=True), TRACE)
    m_i, a2, c2, ref = _calibration(gam, dlt, tau_min, tau_max, clamp)
    l_acc = gl.zeros([BN, HS], gl.float32, layout=LS)
    acc = gl.zeros([D, 2 * HS], gl.float32, layout=MMA)
    rr = gl.arange(0, BN, layout=gl.SliceLayout(1, LS))
    for i in range(nk):
        async_copy.wait_group(RING - 2)
        _barrier()
        _issue_tile(ring, nk + i + RING - 1, nk, kcode, vcode, row0, tn, BN, D)
        v = _ring_value_chunks(ring, (nk + i) % RING, BN, D)
        raw = scores.index(i).load(LS)
        p = gl.exp2((raw - gl.expand_dims(ref, 0)) * gl.expand_dims(a2, 0) + gl.expand_dims(c2, 0))
        p = gl.where(gl.expand_dims(i * BN + rr < tn, 1), p, 0.0)
        l_acc += p
        pb = gl.convert_layout(_hilo_cols(p, BN, HS, P_SCALE), OP_B)
        acc = mma_v2(_value_operand(v, BN, D), pb, acc)
    async_copy.wait_group(0)
    if TRACE:
        _stamp(trace, trow, 7, gl.sum(gl.sum(l_acc, axis=1), axis=0).to(gl.int32, bitcast=True), TRACE)
    if gl.max(gl.where(lane == 0, left_v, -1), axis=0) + 1 == members:
        # the last to leave empties the slot for the next launch
        z = gl.arange(0, SLOT_INTS, layout=gl.SliceLayout(0, LS))
        gl.store(slot + z, gl.zeros([SLOT_INTS], gl.int32, layout=gl.SliceLayout(0, LS)))
    l_i = gl.sum(l_acc, axis=0)
    r = gl.arange(0, D, layout=gl.SliceLayout(1, L))
    dch = _value_channel(r, D)
    undo = _pow2(24 - (r // 8) % 8)  # the subnormal code of bit p is 2^(p - 24)
    o = _finish_rows(acc, l_i, undo, gl.load(vsig + sc_base + dch), gl.load(valp + sc_base + dch), D, HS)
    return gl.convert_layout(m_i, gl.SliceLayout(0, L)), gl.convert_layout(l_i, gl.SliceLayout(0, L)), o, dch


@gluon.jit
def _fp_item(q, q_off, kfp, vfp, fp_off, fp_cap, kvh, t0, tn, hq0, G, sm_scale,
             D: gl.constexpr, BN: gl.constexpr, HS: gl.constexpr):
    """Softmax partial of full-precision tokens t0 .. t0+tn of one sequence (online softmax)."""
    LS: gl.constexpr = SCORES
    L: gl.constexpr = ROWS
    LT: gl.constexpr = TILE16
    qf = _load_query(q, q_off, hq0, G, D, HS)
    wb = gl.convert_layout(gl.reshape(gl.join(qf.to(gl.float16), gl.zeros([D, HS], gl.float16, layout=L)),
                                      [D, 2 * HS]), OP_B)  # q is exact in fp16: no lo part
    qk_scale = sm_scale * LOG2E
    base = fp_off + (kvh * fp_cap + t0) * D
    tt = gl.arange(0, BN, layout=gl.SliceLayout(1, LT))
    dd = gl.arange(0, D, layout=gl.SliceLayout(0, LT))
    m_i = gl.full([HS], NEG_BIG, gl.float32, layout=gl.SliceLayout(0, LS))
    l_i = gl.zeros([HS], gl.float32, layout=gl.SliceLayout(0, LS))
    acc = gl.zeros([D, 2 * HS], gl.float32, layout=MMA)
    for start in range(0, tn, BN):
        rows = start + tt
        lmask = gl.expand_dims(rows < tn, 1)
        offs = base + gl.expand_dims(rows, 1) * D + gl.expand_dims(dd, 0)
        kt = gl.load(kfp + offs, mask=lmask, other=0.0)
        vt = gl.load(vfp + offs, mask=lmask, other=0.0)  # with the keys: one round trip per tile, not two
        s = mma_v2(gl.convert_layout(kt, OP_A), wb, gl.zeros([BN, 2 * HS], gl.float32, layout=MMA))
        rmask = gl.expand_dims(gl.convert_layout(rows < tn, gl.SliceLayout(1, LS)), 1)
        t = gl.where(rmask, _pair_sum(s, BN, HS, LS) * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(t, axis=0))
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(t - gl.expand_dims(m_new, 0))
        l_i = l_i * alpha + gl.sum(p, axis=0)
        m_i = m_new
        alpha2 = gl.convert_layout(gl.reshape(gl.join(alpha, alpha), [2 * HS]), gl.SliceLayout(0, MMA))
        va = gl.convert_layout(gl.permute(vt, [1, 0]), OP_A)
        pb = gl.convert_layout(_hilo_cols(p, BN, HS, P_SCALE), OP_B)
        acc = mma_v2(va, pb, acc * gl.expand_dims(alpha2, 0))
    r = gl.arange(0, D, layout=gl.SliceLayout(1, L))
    ones = gl.full([D], 1.0, gl.float32, layout=gl.SliceLayout(1, L))
    zeros = gl.zeros([D], gl.float32, layout=gl.SliceLayout(1, L))
    o = _finish_rows(acc, l_i, ones, ones, zeros, D, HS)
    return gl.convert_layout(m_i, gl.SliceLayout(0, L)), gl.convert_layout(l_i, gl.SliceLayout(0, L)), o, r


@gluon.jit
def _finish(m_i, l_i, o, dch, wi, seq, srow, kvh, hq0, G, Hq, KVH, part_ml, part_acc, counters, out, trace, trow,
            D: gl.constexpr, HS: gl.constexpr, TRACE: gl.constexpr):
    """Stores this item's partial (row r of o is channel dch[r]); the last item of (seq, kvh) to arrive merges
    all partials into out."""
    L: gl.constexpr = ROWS
    s = gl.arange(0, HS, layout=gl.SliceLayout(0, L))
    d = gl.arange(0, D, layout=gl.SliceLayout(1, L))
    hmask = s < G
    h = hq0 + s
    prow = wi.to(gl.int64) * Hq + h
    gl.store(part_ml + prow * 2, m_i, mask=hmask)
    gl.store(part_ml + prow * 2 + 1, l_i, mask=hmask)
    gl.store(part_acc + gl.expand_dims(prow, 0) * D + gl.expand_dims(dch, 1), o, mask=gl.expand_dims(hmask, 0))
    # read before the release below: a load after an acquire cannot start until the atomic returns
    w_first = gl.load(srow + 4).to(gl.int32)
    w_count = gl.load(srow + 5).to(gl.int32)
    # every thread's stores are ordered before the barrier, the barrier before the gpu-scope release
    _barrier()
    cptr = counters + seq * KVH + kvh
    arrived = gl.atomic_add(cptr, 1, sem="acq_rel", scope="gpu")
    _stamp(trace, trow, 8, arrived, TRACE)
    if arrived == w_count - 1:
        # MERGE_ITEMS partials per round trip, rescaled online to the running maximum (no separate pass for the
        # maximum: that was one more round trip on the critical path of small batches)
        w_end = w_first + w_count
        m_run = gl.full([HS], NEG_BIG, gl.float32, layout=gl.SliceLayout(0, L))
        l_run = gl.zeros([HS], gl.float32, layout=gl.SliceLayout(0, L))
        o_run = gl.zeros([D, HS], gl.float32, layout=L)
        for i in range(w_first, w_end, MERGE_ITEMS):
            m_new = m_run
            for j in gl.static_range(MERGE_ITEMS):
                rr = (i + j).to(gl.int64) * Hq + h
                m_new = gl.maximum(m_new, gl.load(part_ml + rr * 2, mask=hmask & (i + j < w_end), other=NEG_BIG,
                                                  cache_modifier=".cg"))
            f_run = gl.exp2(m_run - m_new)
            l_run = l_run * f_run
            o_run = o_run * gl.expand_dims(f_run, 0)
            for j in gl.static_range(MERGE_ITEMS):
                ok = hmask & (i + j < w_end)
                rr = (i + j).to(gl.int64) * Hq + h
                mi = gl.load(part_ml + rr * 2, mask=ok, other=NEG_BIG, cache_modifier=".cg")
                li = gl.load(part_ml + rr * 2 + 1, mask=ok, other=0.0, cache_modifier=".cg")
                oi = gl.load(part_acc + gl.expand_dims(rr, 0) * D + gl.expand_dims(d, 1), mask=gl.expand_dims(ok, 0),
                             other=0.0, cache_modifier=".cg")
                f_i = gl.exp2(mi - m_new)
                l_run = l_run + li * f_i
                o_run = o_run + oi * gl.expand_dims(f_i, 0)
            m_run = m_new
        gl.store(out + gl.expand_dims(seq * Hq + h, 0) * D + gl.expand_dims(d, 1), o_run / gl.expand_dims(l_run, 0),
                 mask=gl.expand_dims(hmask, 0))
        if TRACE:
            _stamp(trace, trow, 9, gl.sum(l_run, axis=0).to(gl.int32, bitcast=True), TRACE)
        gl.atomic_xchg(cptr, 0, sem="relaxed", scope="gpu")  # ready for the next launch


_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier

# ------------------------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------------------------


@gluon.jit
def calibquant_minmax(q, kcode, ksig, kalp, seq_tab, span_tab, mm_tab, mm_buf, KVH, G, sm_scale,
                      D: gl.constexpr, BITS: gl.constexpr, BN: gl.constexpr, HS: gl.constexpr):
    """grid (num_mm_chunks, KVH), one warp: mm_buf[c][kvh*G + s] = (min, max) of the raw visual scores of chunk c."""
    gl.static_assert(BITS == 1, "the Gluon kernels read 1-bit codes; attention.py has the others")
    c = gl.program_id(0)
    kvh = gl.program_id(1)
    Hq = KVH * G
    hq0 = kvh * G
    seq, span, t0, tn = _table_row4(mm_tab + c * MM_COLS)
    q_off = gl.multiple_of(gl.load(seq_tab + seq * SEQ_COLS + 3), 16)
    RB: gl.constexpr = D // 8
    code_off, tokens, sc_off = _span_row(span_tab, span)
    wb0, wb1, e2, bias = _key_weights(q, q_off, hq0, G, ksig, kalp, sc_off + kvh * D, sm_scale, D, HS)
    mn, mx = _span_minmax(kcode, code_off + (kvh * tokens + t0) * RB, tn, wb0, wb1, e2, bias, BN, D, HS)
    s = gl.arange(0, HS, layout=gl.SliceLayout(0, SCORES))
    mrow = mm_buf + (c.to(gl.int64) * Hq + hq0 + s) * 2
    gl.store(mrow, mn, mask=s < G)
    gl.store(mrow + 1, mx, mask=s < G)


@gluon.jit
def calibquant_decode(q, kfp, vfp, kcode, vcode, ksig, kalp, vsig, valp,
                      seq_tab, span_tab, work_tab, mm_buf, part_ml, part_acc, counters, out,
                      KVH, G, sm_scale, tau_min, tau_max, clamp,
                      D: gl.constexpr, BITS: gl.constexpr, MM_MODE: gl.constexpr, BN: gl.constexpr,
                      HS: gl.constexpr, CH: gl.constexpr):
    """grid (num_work, KVH), one warp. MM_MODE 0: no calibration; 1: gamma/delta from mm_buf (calibquant_minmax
    ran first); 2: each visual item is a whole span and finds gamma/delta itself; 3: one launch, the items of a
    span meet at a rendezvous (visual items of at most CH tokens; mm_buf holds the int32 slots, see ptx/README.md)."""
    _decode(q, kfp, vfp, kcode, vcode, ksig, kalp, vsig, valp, seq_tab, span_tab, work_tab, mm_buf, part_ml, part_acc,
            counters, out, KVH, G, sm_scale, tau_min, tau_max, clamp, mm_buf, D, BITS, MM_MODE, BN, HS, CH, False)


@gluon.jit
def calibquant_decode_traced(q, kfp, vfp, kcode, vcode, ksig, kalp, vsig, valp,
                             seq_tab, span_tab, work_tab, mm_buf, part_ml, part_acc, counters, out,
                             KVH, G, sm_scale, tau_min, tau_max, clamp, trace,
                             D: gl.constexpr, BITS: gl.constexpr, MM_MODE: gl.constexpr, BN: gl.constexpr,
                             HS: gl.constexpr, CH: gl.constexpr):
    """calibquant_decode (mode 3) that also writes a timeline row per program into trace (TRACE_COLS int64 each,
    ticket order): the harness's evidence of where a step's time goes; never shipped."""
    gl.static_assert(MM_MODE == 3, "the timeline rows are in ticket order")
    _decode(q, kfp, vfp, kcode, vcode, ksig, kalp, vsig, valp, seq_tab, span_tab, work_tab, mm_buf, part_ml, part_acc,
            counters, out, KVH, G, sm_scale, tau_min, tau_max, clamp, trace, D, BITS, MM_MODE, BN, HS, CH, True)


@gluon.jit
def _decode(q, kfp, vfp, kcode, vcode, ksig, kalp, vsig, valp, seq_tab, span_tab, work_tab, mm_buf, part_ml, part_acc,
            counters, out, KVH, G, sm_scale, tau_min, tau_max, clamp, trace,
            D: gl.constexpr, BITS: gl.constexpr, MM_MODE: gl.constexpr, BN: gl.constexpr, HS: gl.constexpr,
            CH: gl.constexpr, TRACE: gl.constexpr):
    gl.static_assert(BITS == 1, "the Gluon kernels read 1-bit codes; attention.py has the others")
    if TRACE:
        t_start = _now(0)
    if MM_MODE == 3:
        gl.static_assert(CH % BN == 0, "CH is a whole number of tiles")
        # Programs take their index from a ticket in the order they start, KV-head-major so that the items of a
        # (span, KV head) hold consecutive tickets: only the newest group can wait on programs not yet started
        slots = mm_buf.to(gl.pointer_type(gl.int32))
        NW = gl.num_programs(0)
        ticket = gl.atomic_add(slots, 1, sem="relaxed", scope="gpu")
        if ticket == NW * KVH - 1:
            gl.atomic_xchg(slots, 0, sem="relaxed", scope="gpu")  # every ticket is taken: ready for the next launch
        wi = ticket % NW
        kvh = ticket // NW
        RB: gl.constexpr = D // 8
        ring = gl.allocate_shared_memory(gl.uint8, [RING, BN, RB], PLAIN2)
        scores = gl.allocate_shared_memory(gl.float32, [CH // BN, BN, HS], PLAIN2)
    else:
        wi = gl.program_id(0)
        kvh = gl.program_id(1)
    Hq = KVH * G
    hq0 = kvh * G
    seq, span, t0, tn = _table_row4(work_tab + wi * WORK_COLS)
    srow = seq_tab + seq * SEQ_COLS
    q_off = gl.multiple_of(gl.load(srow + 3), 16)
    trow = kvh * gl.num_programs(0) + wi
    if TRACE:
        _put(trace, trow, 0, gl.inline_asm_elementwise("{ .reg .u32 s; mov.u32 s, %smid; cvt.u64.u32 $0, s; }",
                                                      "=l,r", [gl.arange(0, 32, layout=LANES)], dtype=gl.int64,
                                                      is_pure=False, pack=1))
        _put(trace, trow, 1, gl.arange(0, 32, layout=LANES).to(gl.int64) * 0 + tn)
        _put(trace, trow, 2, t_start)
        _stamp(trace, trow, 3, tn + span.to(gl.int32) + q_off.to(gl.int32), TRACE)
    FP_BN: gl.constexpr = BN if MM_MODE != 3 else 16  # mode 3: fp16 tiles of 16 rows hold half the registers
    if span < 0:
        m_i, l_i, o, dch = _fp_item(q, q_off, kfp, vfp, gl.multiple_of(gl.load(srow), 16), gl.load(srow + 2), kvh,
                                    t0, tn, hq0, G, sm_scale, D, FP_BN, HS)
        if TRACE:
            _stamp(trace, trow, 5, gl.max(l_i, axis=0).to(gl.int32, bitcast=True), TRACE)
    elif MM_MODE == 3:
        m_i, l_i, o, dch = _visual_item_fused(q, q_off, kcode, vcode, ksig, kalp, vsig, valp, span_tab, slots, ring,
                                              scores, span, kvh, t0, tn, hq0, G, KVH, sm_scale, tau_min, tau_max,
                                              clamp, trace, trow, D, BN, HS, TRACE)
    else:
        m_i, l_i, o, dch = _visual_item(q, q_off, kcode, vcode, ksig, kalp, vsig, valp, span_tab, mm_buf, span, kvh,
                                        t0, tn, hq0, G, Hq, sm_scale, tau_min, tau_max, clamp, D, MM_MODE, BN, HS)
    _finish(m_i, l_i, o, dch, wi, seq, srow, kvh, hq0, G, Hq, KVH, part_ml, part_acc, counters, out, trace, trow, D,
            HS, TRACE)
