"""Decode attention over a per-sequence KV cache whose visual spans are CalibQuant-quantized.

Three kernels share the helpers below (see ptx/README.md for the tables and launch recipes):
  calibquant_minmax  per visual chunk: min and max of the raw visual scores of every query head (calibration input)
  calibquant_decode  per work item (a chunk of the full-precision block or of one visual span) and KV head:
                     scores, calibration, softmax partials; the last item of a (sequence, KV head) to finish
                     combines all partials and writes the output
  fp16_decode        the same flash-decoding over full-precision tokens only (the baseline)

Numerics. Products run on the tensor cores in fp16 with fp32 accumulation. Operands that are not exact in
fp16 (q*sigma_K for the visual keys, softmax weights p) travel as an fp16 hi/lo pair in two adjacent columns
of the N dimension, so each is carried to ~2^-22 relative; the dot product's N dimension has 16 columns
anyway (the minimum), so the pair costs no extra MMA work. Head slots: HS >= G query heads per KV head;
slot s of a KV head is query head kvh*G + s; slots >= G compute finite garbage that is never stored.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
NEG_BIG = tl.constexpr(-1.0e30)  # finite "minus infinity": keeps every rescale factor exp2(a - b) free of NaN
P_SCALE = tl.constexpr(1024.0)  # softmax weights p <= 1 are scaled into fp16's normal range before the hi/lo split

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

FP16_DECODE_ARGS = [
    ("q", "*fp16"), ("kfp", "*fp16"), ("vfp", "*fp16"), ("seq_tab", "*i64"), ("work_tab", "*i64"),
    ("part_ml", "*fp32"), ("part_acc", "*fp32"), ("counters", "*i32"), ("out", "*fp32"),
    ("KVH", "i32"), ("G", "i32"), ("sm_scale", "fp32"),
]

SEQ_COLS = tl.constexpr(6)  # seq_tab row: fp_off, fp_len, fp_cap, q_off, work_first, work_count
SPAN_COLS = tl.constexpr(5)  # span_tab row: code_off, tokens, scale_off, mm_first, mm_count
WORK_COLS = tl.constexpr(4)  # work_tab row: seq, span (-1: full-precision block), t0, tn
MM_COLS = tl.constexpr(4)  # mm_tab row: seq, span, t0, tn


@triton.jit
def _table_row4(row):
    """A work_tab or mm_tab row: sequence, span (-1: full-precision block), first token, token count."""
    return tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3).to(tl.int32)


@triton.jit
def _span_row(span_tab, span):
    """A span_tab row's code offset, token count and scale offset."""
    srow = span_tab + span * SPAN_COLS
    return tl.multiple_of(tl.load(srow), 16), tl.load(srow + 1), tl.multiple_of(tl.load(srow + 2), 16)


@triton.jit
def _load_query(q, q_off, hq0, G, D: tl.constexpr, HS: tl.constexpr):
    hs = tl.arange(0, HS)
    d = tl.arange(0, D)
    rows = q_off + (hq0 + hs) * D
    return tl.load(q + rows[:, None] + d[None, :], mask=(hs < G)[:, None], other=0.0)  # [HS, D] fp16


@triton.jit
def _unpack_codes(cb, BN: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, UNPACK: tl.constexpr):
    """[BN, D*BITS/8] packed bytes (MSB first) -> [BN, D] fp16 code values 0 .. 2^BITS-1."""
    if BITS == 8:
        c16 = cb.to(tl.float16)
    else:
        NPB: tl.constexpr = 8 // BITS
        LMASK: tl.constexpr = (1 << BITS) - 1
        sh = BITS * (NPB - 1 - tl.arange(0, NPB))
        x = cb.to(tl.int32)
        bits = tl.reshape((x[:, :, None] >> sh[None, None, :]) & LMASK, (BN, D))
        if UNPACK == 0:
            c16 = bits.to(tl.float16)
        elif UNPACK == 1:
            # 0x6400 is 1024.0 in fp16: OR-ing the code into its mantissa gives exactly 1024 + code.
            c16 = ((bits | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1024.0).to(tl.float16)
        else:
            c16 = tl.where(bits != 0, 1.0, 0.0).to(tl.float16)  # 1-bit only
    return c16


@triton.jit
def _hilo(x, SCALE: tl.constexpr):
    """[R, C] fp32 -> [R, 2C] fp16 with x*SCALE ~= col(2c) + col(2c+1)."""
    xs = x * SCALE
    x_hi = xs.to(tl.float16)
    x_lo = (xs - x_hi.to(tl.float32)).to(tl.float16)
    return tl.interleave(x_hi, x_lo)


@triton.jit
def _pair_sum(x, R: tl.constexpr, HS: tl.constexpr):
    """[R, 2*HS] -> [R, HS]: adds the hi and lo columns of each head slot."""
    hi, lo = tl.split(tl.reshape(x, (R, HS, 2)))
    return hi + lo


@triton.jit
def _pow2(e):
    """2^e as fp32, exactly (e: int32, -126 <= e <= 127)."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _plane(c16, i: tl.constexpr, BITS: tl.constexpr):
    """Codes of bit-plane i (channel NPB*j + i of byte j) as fp16 subnormals: exactly code * 2^(SH - 24).
    (A masked field of the low byte, read as an fp16 bit pattern below 0x0400, is linear in its integer value.)"""
    MASK: tl.constexpr = ((1 << BITS) - 1) << (8 - BITS * (i + 1))
    return (c16 & MASK).to(tl.float16, bitcast=True)


@triton.jit
def _planes_pm(c16, BN: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr):
    """[BN, RB] code bytes -> [BN, D] fp16 in plane-major column order (column i*RB + j holds channel NPB*j + i),
    each plane scaled by 2^(SH_i - 24) like _plane."""
    NPB: tl.constexpr = 8 // BITS
    masks = (tl.full([NPB], (1 << BITS) - 1, tl.int32) << (8 - BITS * (1 + tl.arange(0, NPB)))).to(tl.int16)
    x = c16[:, None, :] & masks[None, :, None]
    return tl.reshape(x, (BN, D)).to(tl.float16, bitcast=True)


@triton.jit
def _load_c16(code, row0, start, tn, BN: tl.constexpr, RB: tl.constexpr):
    rows = start + tl.arange(0, BN)
    rmask = rows < tn
    cb = tl.load(code + row0 + rows[:, None] * RB + tl.arange(0, RB)[None, :], mask=rmask[:, None], other=0)
    return cb.to(tl.int16), rmask


@triton.jit
def _plane_weights(q, q_off, hq0, G, ksig, sc_base, w_scale, e, i: tl.constexpr,
                   D: tl.constexpr, BITS: tl.constexpr, HS: tl.constexpr):
    """hi/lo weights [RB, 2*HS] of bit-plane i: q * sigma_K * w_scale * 2^(24 - SH_i - e) at channels NPB*j + i."""
    NPB: tl.constexpr = 8 // BITS
    RB: tl.constexpr = D * BITS // 8
    SH: tl.constexpr = 8 - BITS * (i + 1)
    hs = tl.arange(0, HS)
    ch = NPB * tl.arange(0, RB) + i
    qi = tl.load(q + q_off + (hq0 + hs)[:, None] * D + ch[None, :], mask=(hs < G)[:, None], other=0.0)
    ski = tl.load(ksig + sc_base + ch)
    return _hilo(tl.trans(qi.to(tl.float32) * (ski * (w_scale * _pow2(24 - SH - e)))[None, :]), 1.0)


@triton.jit
def _visual_weights(q, q_off, qf, hq0, G, ksig, kalp, sc_base, sm_scale,
                    D: tl.constexpr, BITS: tl.constexpr, HS: tl.constexpr, IMPL: tl.constexpr):
    """Post-scaling: q * sigma_K / sqrt(D) as hi/lo fp16 weights (a tuple, layout per IMPL; for IMPL 1 and 2 the
    weights carry 2^(24 - SH - e) and the last tuple entry is the fp32 factor 2^e that undoes it), and the bias
    q . alpha_K / sqrt(D) per head slot."""
    d = tl.arange(0, D)
    sk = tl.load(ksig + sc_base + d)
    ak = tl.load(kalp + sc_base + d)
    q32 = qf.to(tl.float32)
    bias = tl.sum(q32 * ak[None, :], axis=1) * sm_scale
    if IMPL == 0:
        wts = (_hilo(tl.trans(q32 * (sk * sm_scale)[None, :]), 1.0),)
    else:
        NPB: tl.constexpr = 8 // BITS
        RB: tl.constexpr = D * BITS // 8
        # 2^e >= 2^9 max|w|: every scaled weight stays below 2^15 in fp16
        wmax = tl.max(tl.max(tl.abs(q32 * sk[None, :]), axis=1), axis=0) * sm_scale
        e = tl.ceil(tl.log2(tl.maximum(wmax, 1e-30))).to(tl.int32) + 9
        if IMPL == 2:
            r = tl.arange(0, D)
            ch = NPB * (r % RB) + r // RB
            hs = tl.arange(0, HS)
            qp = tl.load(q + q_off + (hq0 + hs)[:, None] * D + ch[None, :], mask=(hs < G)[:, None], other=0.0)
            skp = tl.load(ksig + sc_base + ch)
            row_scale = _pow2(16 + BITS * (1 + r // RB) - e)  # 2^(24 - SH(row) - e)
            wts = (_hilo(tl.trans(qp.to(tl.float32) * (skp * sm_scale * row_scale)[None, :]), 1.0), _pow2(e))
        elif NPB == 8:
            wts = (_plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 0, D, BITS, HS),
                   _plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 1, D, BITS, HS),
                   _plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 2, D, BITS, HS),
                   _plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 3, D, BITS, HS),
                   _plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 4, D, BITS, HS),
                   _plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 5, D, BITS, HS),
                   _plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 6, D, BITS, HS),
                   _plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 7, D, BITS, HS),
                   _pow2(e))
        elif NPB == 4:
            wts = (_plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 0, D, BITS, HS),
                   _plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 1, D, BITS, HS),
                   _plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 2, D, BITS, HS),
                   _plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 3, D, BITS, HS),
                   _pow2(e))
        else:
            wts = (_plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 0, D, BITS, HS),
                   _plane_weights(q, q_off, hq0, G, ksig, sc_base, sm_scale, e, 1, D, BITS, HS),
                   _pow2(e))
    return wts, bias


@triton.jit
def _raw_scores(kcode, row0, start, tn, wts, bias, BN: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr,
                HS: tl.constexpr, IMPL: tl.constexpr, UNPACK: tl.constexpr):
    """Visual scores s_V (natural-log units, 1/sqrt(D) applied) of tokens start .. start+BN of a chunk."""
    RB: tl.constexpr = D * BITS // 8
    NPB: tl.constexpr = 8 // BITS
    c16, rmask = _load_c16(kcode, row0, start, tn, BN, RB)
    if IMPL == 0:
        raw = _pair_sum(tl.dot(_unpack_codes(c16, BN, D, BITS, UNPACK), wts[0]), BN, HS) + bias[None, :]
    elif IMPL == 2:
        raw = _pair_sum(tl.dot(_planes_pm(c16, BN, D, BITS), wts[0]), BN, HS) * wts[1] + bias[None, :]
    else:
        s2 = tl.dot(_plane(c16, 0, BITS), wts[0])
        s2 = tl.dot(_plane(c16, 1, BITS), wts[1], s2)
        if NPB > 2:
            s2 = tl.dot(_plane(c16, 2, BITS), wts[2], s2)
            s2 = tl.dot(_plane(c16, 3, BITS), wts[3], s2)
        if NPB > 4:
            s2 = tl.dot(_plane(c16, 4, BITS), wts[4], s2)
            s2 = tl.dot(_plane(c16, 5, BITS), wts[5], s2)
            s2 = tl.dot(_plane(c16, 6, BITS), wts[6], s2)
            s2 = tl.dot(_plane(c16, 7, BITS), wts[7], s2)
        raw = _pair_sum(s2, BN, HS) * wts[NPB] + bias[None, :]
    return raw, rmask


@triton.jit
def _chunk_minmax(kcode, row0, tn, wts, bias, BN: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr,
                  HS: tl.constexpr, IMPL: tl.constexpr, UNPACK: tl.constexpr):
    """Min and max over the chunk's tokens of the raw visual score, per head slot. Reduced once at the end."""
    mn = tl.full([BN, HS], float("inf"), tl.float32)
    mx = tl.full([BN, HS], float("-inf"), tl.float32)
    for start in range(0, tn, BN):
        raw, rmask = _raw_scores(kcode, row0, start, tn, wts, bias, BN, D, BITS, HS, IMPL, UNPACK)
        mn = tl.minimum(mn, tl.where(rmask[:, None], raw, float("inf")))
        mx = tl.maximum(mx, tl.where(rmask[:, None], raw, float("-inf")))
    return tl.min(mn, axis=0), tl.max(mx, axis=0)


@triton.jit
def _join_planes(o0, o1, o2, o3, o4, o5, o6, o7, R: tl.constexpr, D: tl.constexpr, NPB: tl.constexpr):
    """Per-plane outputs [R, RB] (plane i = channels NPB*j + i) -> [R, D] in channel order."""
    if NPB == 8:
        x = tl.join(tl.join(tl.join(o0, o4), tl.join(o2, o6)), tl.join(tl.join(o1, o5), tl.join(o3, o7)))
    elif NPB == 4:
        x = tl.join(tl.join(o0, o2), tl.join(o1, o3))
    else:
        x = tl.join(o0, o1)
    return tl.reshape(x, (R, D))


@triton.jit
def _visual_segment(q, q_off, qf, kcode, vcode, ksig, kalp, vsig, valp, span_tab, mm_buf, span, kvh, t0, tn,
                    hq0, G, Hq, sm_scale, tau_min, tau_max, clamp,
                    D: tl.constexpr, BITS: tl.constexpr, MM_MODE: tl.constexpr, BN: tl.constexpr,
                    HS: tl.constexpr, IMPL: tl.constexpr, UNPACK: tl.constexpr):
    """Softmax partial (m in log2 units, l, o[D, HS], channel of each row of o) of tokens t0 .. t0+tn of a span."""
    RB: tl.constexpr = D * BITS // 8
    NPB: tl.constexpr = 8 // BITS
    srow = span_tab + span * SPAN_COLS
    code_off, tokens, sc_off = _span_row(span_tab, span)
    row0 = code_off + (kvh * tokens + t0) * RB
    sc_base = sc_off + kvh * D
    wts, bias = _visual_weights(q, q_off, qf, hq0, G, ksig, kalp, sc_base, sm_scale, D, BITS, HS, IMPL)
    hs = tl.arange(0, HS)
    if MM_MODE == 0:
        m_i = tl.full([HS], NEG_BIG, tl.float32)
        l_i = tl.zeros([HS], tl.float32)
    else:
        if MM_MODE == 1:
            # gamma/delta of the whole span from the calibquant_minmax partials
            mm_first = tl.load(srow + 3).to(tl.int32)
            mm_count = tl.load(srow + 4).to(tl.int32)
            hmask = hs < G
            gam = tl.full([HS], float("inf"), tl.float32)
            dlt = tl.full([HS], float("-inf"), tl.float32)
            for c in range(mm_first, mm_first + mm_count):
                mrow = mm_buf + (c * Hq + hq0 + hs) * 2
                gam = tl.minimum(gam, tl.load(mrow, mask=hmask, other=0.0))
                dlt = tl.maximum(dlt, tl.load(mrow + 1, mask=hmask, other=0.0))
        else:
            # this item is the whole span: a first pass over its keys gives gamma/delta (second read hits L2)
            gam, dlt = _chunk_minmax(kcode, row0, tn, wts, bias, BN, D, BITS, HS, IMPL, UNPACK)
        # spec section 4: g(x) = (x - gam) / (dlt - gam + 1e-8) * ((dlt - tau_max) - (gam + tau_min)) + gam + tau_min
        a = ((dlt - tau_max) - (gam + tau_min)) / (dlt - gam + 1e-8)
        a = tl.where(clamp != 0, tl.maximum(a, 0.0), a)
        top = tl.maximum((dlt - gam) * a, 0.0)  # g is affine: its max over [gam, dlt] is gam + tau_min + top
        m_i = (gam + tau_min + top) * LOG2E
        a2 = a * LOG2E
        c2 = -top * LOG2E
        l_acc = tl.zeros([BN, HS], tl.float32)
    if IMPL == 1:
        o0 = tl.zeros([2 * HS, RB], tl.float32)
        o1 = tl.zeros([2 * HS, RB], tl.float32)
        o2 = o0
        o3 = o0
        o4 = o0
        o5 = o0
        o6 = o0
        o7 = o0
    else:
        acc = tl.zeros([D, 2 * HS], tl.float32)
    for start in range(0, tn, BN):
        raw, rmask = _raw_scores(kcode, row0, start, tn, wts, bias, BN, D, BITS, HS, IMPL, UNPACK)
        if MM_MODE == 0:
            t = tl.where(rmask[:, None], raw * LOG2E, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(t, axis=0))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(t - m_new[None, :])
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
            alpha2 = tl.interleave(alpha, alpha)
        else:
            p = tl.where(rmask[:, None], tl.exp2((raw - gam[None, :]) * a2[None, :] + c2[None, :]), 0.0)
            l_acc += p
        pairs = _hilo(p, P_SCALE)  # [BN, 2*HS]
        cv16, vmask = _load_c16(vcode, row0, start, tn, BN, RB)
        if IMPL == 1:
            pt = tl.trans(pairs)
            if MM_MODE == 0:
                o0 = o0 * alpha2[:, None]
                o1 = o1 * alpha2[:, None]
                if NPB > 2:
                    o2 = o2 * alpha2[:, None]
                    o3 = o3 * alpha2[:, None]
                if NPB > 4:
                    o4 = o4 * alpha2[:, None]
                    o5 = o5 * alpha2[:, None]
                    o6 = o6 * alpha2[:, None]
                    o7 = o7 * alpha2[:, None]
            o0 = tl.dot(pt, _plane(cv16, 0, BITS), o0)
            o1 = tl.dot(pt, _plane(cv16, 1, BITS), o1)
            if NPB > 2:
                o2 = tl.dot(pt, _plane(cv16, 2, BITS), o2)
                o3 = tl.dot(pt, _plane(cv16, 3, BITS), o3)
            if NPB > 4:
                o4 = tl.dot(pt, _plane(cv16, 4, BITS), o4)
                o5 = tl.dot(pt, _plane(cv16, 5, BITS), o5)
                o6 = tl.dot(pt, _plane(cv16, 6, BITS), o6)
                o7 = tl.dot(pt, _plane(cv16, 7, BITS), o7)
        else:
            if MM_MODE == 0:
                acc = acc * alpha2[None, :]
            if IMPL == 0:
                cv = _unpack_codes(cv16, BN, D, BITS, UNPACK)
            else:
                cv = _planes_pm(cv16, BN, D, BITS)
            acc = tl.dot(tl.trans(cv), pairs, acc)
    if MM_MODE != 0:
        l_i = tl.sum(l_acc, axis=0)
    r = tl.arange(0, D)
    if IMPL == 1:
        # undo the planes' 2^(SH - 24), put channels in order, add each head's hi and lo rows
        o0 = o0 * (1 << (16 + BITS))  # 2^(24 - SH_0), SH_i = 8 - BITS*(i+1)
        o1 = o1 * (1 << (16 + 2 * BITS))
        if NPB > 2:
            o2 = o2 * (1 << (16 + 3 * BITS))
            o3 = o3 * (1 << (16 + 4 * BITS))
        if NPB > 4:
            o4 = o4 * (1 << (16 + 5 * BITS))
            o5 = o5 * (1 << (16 + 6 * BITS))
            o6 = o6 * (1 << (16 + 7 * BITS))
            o7 = o7 * (1 << (16 + 8 * BITS))
        ot = _join_planes(o0, o1, o2, o3, o4, o5, o6, o7, 2 * HS, D, NPB)  # [2*HS, D]
        o = tl.trans(tl.sum(tl.reshape(ot, (HS, 2, D)), axis=1))
        dch = r
    elif IMPL == 2:
        o = _pair_sum(acc, D, HS) * _pow2(16 + BITS * (1 + r // RB))[:, None]  # rows in plane-major order
        dch = NPB * (r % RB) + r // RB
    else:
        o = _pair_sum(acc, D, HS)
        dch = r
    sv = tl.load(vsig + sc_base + dch)
    av = tl.load(valp + sc_base + dch)
    o = o * (1.0 / P_SCALE) * sv[:, None] + av[:, None] * l_i[None, :]
    return m_i, l_i, o, dch


@triton.jit
def _fp_segment(qf, kfp, vfp, fp_off, fp_cap, kvh, t0, tn, sm_scale,
                D: tl.constexpr, BN: tl.constexpr, HS: tl.constexpr):
    """Softmax partial (m in log2 units, l, o[D, HS]) of full-precision tokens t0 .. t0+tn of one sequence."""
    d = tl.arange(0, D)
    q2 = tl.interleave(tl.trans(qf), tl.zeros([D, HS], tl.float16))  # q is exact in fp16: no lo part needed
    base = fp_off + (kvh * fp_cap + t0) * D
    qk_scale = sm_scale * LOG2E
    m_i = tl.full([HS], NEG_BIG, tl.float32)
    l_i = tl.zeros([HS], tl.float32)
    acc = tl.zeros([D, 2 * HS], tl.float32)
    for start in range(0, tn, BN):
        rows = start + tl.arange(0, BN)
        rmask = rows < tn
        offs = base + rows[:, None] * D + d[None, :]
        kt = tl.load(kfp + offs, mask=rmask[:, None], other=0.0)
        t = tl.where(rmask[:, None], _pair_sum(tl.dot(kt, q2), BN, HS) * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(t, axis=0))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(t - m_new[None, :])
        l_i = l_i * alpha + tl.sum(p, axis=0)
        vt = tl.load(vfp + offs, mask=rmask[:, None], other=0.0)
        acc = tl.dot(tl.trans(vt), _hilo(p, P_SCALE), acc * tl.interleave(alpha, alpha)[None, :])
        m_i = m_new
    return m_i, l_i, _pair_sum(acc, D, HS) * (1.0 / P_SCALE), d


@triton.jit
def _finish(m_i, l_i, o, dch, wi, seq, srow, kvh, hq0, G, Hq, KVH, part_ml, part_acc, counters, out,
            D: tl.constexpr, HS: tl.constexpr):
    """Stores this item's partial (row r of o is channel dch[r]); the last item of (seq, kvh) to arrive merges
    all partials into out."""
    hs = tl.arange(0, HS)
    d = tl.arange(0, D)
    hmask = hs < G
    h = hq0 + hs
    prow = wi.to(tl.int64) * Hq + h
    tl.store(part_ml + prow * 2, m_i, mask=hmask)
    tl.store(part_ml + prow * 2 + 1, l_i, mask=hmask)
    tl.store(part_acc + prow[None, :] * D + dch[:, None], o, mask=hmask[None, :])
    # read before the release below: a load after an acquire cannot start until the atomic returns
    w_first = tl.load(srow + 4).to(tl.int32)
    w_count = tl.load(srow + 5).to(tl.int32)
    # every thread's stores are ordered before the barrier, the barrier before the gpu-scope release
    tl.debug_barrier()
    cptr = counters + seq * KVH + kvh
    arrived = tl.atomic_add(cptr, 1, sem="acq_rel", scope="gpu")
    if arrived == w_count - 1:
        m_run = tl.full([HS], NEG_BIG, tl.float32)
        l_run = tl.zeros([HS], tl.float32)
        o_run = tl.zeros([D, HS], tl.float32)
        for i in range(w_first, w_first + w_count):
            r = i.to(tl.int64) * Hq + h
            mi = tl.load(part_ml + r * 2, mask=hmask, other=NEG_BIG, cache_modifier=".cg")
            li = tl.load(part_ml + r * 2 + 1, mask=hmask, other=0.0, cache_modifier=".cg")
            oi = tl.load(part_acc + r[None, :] * D + d[:, None], mask=hmask[None, :], other=0.0,
                         cache_modifier=".cg")
            m_new = tl.maximum(m_run, mi)
            f_run = tl.exp2(m_run - m_new)
            f_i = tl.exp2(mi - m_new)
            l_run = l_run * f_run + li * f_i
            o_run = o_run * f_run[None, :] + oi * f_i[None, :]
            m_run = m_new
        tl.store(out + (seq * Hq + h)[None, :] * D + d[:, None], o_run / l_run[None, :], mask=hmask[None, :])
        tl.atomic_xchg(cptr, 0, sem="relaxed", scope="gpu")  # ready for the next launch


@triton.jit
def calibquant_minmax(q, kcode, ksig, kalp, seq_tab, span_tab, mm_tab, mm_buf, KVH, G, sm_scale,
                      D: tl.constexpr, BITS: tl.constexpr, BN: tl.constexpr, HS: tl.constexpr,
                      UNPACK: tl.constexpr, IMPL: tl.constexpr):
    """grid (num_mm_chunks, KVH): mm_buf[c][kvh*G + s] = (min, max) of the raw visual scores of chunk c."""
    c = tl.program_id(0)
    kvh = tl.program_id(1)
    Hq = KVH * G
    hq0 = kvh * G
    seq, span, t0, tn = _table_row4(mm_tab + c * MM_COLS)
    q_off = tl.multiple_of(tl.load(seq_tab + seq * SEQ_COLS + 3), 16)
    qf = _load_query(q, q_off, hq0, G, D, HS)
    RB: tl.constexpr = D * BITS // 8
    code_off, tokens, sc_off = _span_row(span_tab, span)
    wts, bias = _visual_weights(q, q_off, qf, hq0, G, ksig, kalp, sc_off + kvh * D, sm_scale, D, BITS, HS, IMPL)
    mn, mx = _chunk_minmax(kcode, code_off + (kvh * tokens + t0) * RB, tn, wts, bias, BN, D, BITS, HS, IMPL,
                           UNPACK)
    hs = tl.arange(0, HS)
    mrow = mm_buf + (c.to(tl.int64) * Hq + hq0 + hs) * 2
    tl.store(mrow, mn, mask=hs < G)
    tl.store(mrow + 1, mx, mask=hs < G)


@triton.jit
def calibquant_decode(q, kfp, vfp, kcode, vcode, ksig, kalp, vsig, valp,
                      seq_tab, span_tab, work_tab, mm_buf, part_ml, part_acc, counters, out,
                      KVH, G, sm_scale, tau_min, tau_max, clamp,
                      D: tl.constexpr, BITS: tl.constexpr, MM_MODE: tl.constexpr, BN: tl.constexpr,
                      HS: tl.constexpr, UNPACK: tl.constexpr, IMPL: tl.constexpr):
    """grid (num_work, KVH). MM_MODE 0: no calibration; 1: gamma/delta from mm_buf (calibquant_minmax ran
    first); 2: each visual item is a whole span and finds gamma/delta itself."""
    wi = tl.program_id(0)
    kvh = tl.program_id(1)
    Hq = KVH * G
    hq0 = kvh * G
    seq, span, t0, tn = _table_row4(work_tab + wi * WORK_COLS)
    srow = seq_tab + seq * SEQ_COLS
    q_off = tl.multiple_of(tl.load(srow + 3), 16)
    qf = _load_query(q, q_off, hq0, G, D, HS)
    if span < 0:
        m_i, l_i, o, dch = _fp_segment(qf, kfp, vfp, tl.multiple_of(tl.load(srow), 16), tl.load(srow + 2), kvh,
                                       t0, tn, sm_scale, D, BN, HS)
    else:
        m_i, l_i, o, dch = _visual_segment(q, q_off, qf, kcode, vcode, ksig, kalp, vsig, valp, span_tab, mm_buf,
                                           span, kvh, t0, tn, hq0, G, Hq, sm_scale, tau_min, tau_max, clamp,
                                           D, BITS, MM_MODE, BN, HS, IMPL, UNPACK)
    _finish(m_i, l_i, o, dch, wi, seq, srow, kvh, hq0, G, Hq, KVH, part_ml, part_acc, counters, out, D, HS)


@triton.jit
def fp16_decode(q, kfp, vfp, seq_tab, work_tab, part_ml, part_acc, counters, out, KVH, G, sm_scale,
                D: tl.constexpr, BN: tl.constexpr, HS: tl.constexpr):
    """grid (num_work, KVH): flash-decoding over full-precision tokens only (work rows' span column ignored)."""
    wi = tl.program_id(0)
    kvh = tl.program_id(1)
    Hq = KVH * G
    hq0 = kvh * G
    seq, _, t0, tn = _table_row4(work_tab + wi * WORK_COLS)
    srow = seq_tab + seq * SEQ_COLS
    qf = _load_query(q, tl.multiple_of(tl.load(srow + 3), 16), hq0, G, D, HS)
    m_i, l_i, o, dch = _fp_segment(qf, kfp, vfp, tl.multiple_of(tl.load(srow), 16), tl.load(srow + 2), kvh, t0,
                                   tn, sm_scale, D, BN, HS)
    _finish(m_i, l_i, o, dch, wi, seq, srow, kvh, hq0, G, Hq, KVH, part_ml, part_acc, counters, out, D, HS)
