"""The kernel checks, device-independent: a dev uploads, launches and downloads; each check draws fresh seeded
inputs, poisons outputs with NaN and compares with the references.

Tolerances, from the arithmetic (u = 2^-23 bounds one fp32 rounding, also for accumulators that truncate):
  quantize_pack   bit-exact: the kernel and the reference evaluate the same IEEE float32 formulas.
  score of a token  e_s = (2^-21 + (D + 2) u) * S_abs + 2^-22 (|s| + |m| + 4): the hi/lo fp16 pair carries
                  q*sigma_K to 2^-22, an fp32 dot of D products adds at most D u of S_abs = sum_d |q_d| (|alpha_d|
                  + |sigma_d| code_d) / sqrt(D) (or sum |q_d k_d| / sqrt(D) for full-precision keys); the last
                  term covers the fp32 roundings of scaling, shifting and ex2.approx.
  calibration     multiplies the score error by amp = 1 + 2|a| + 2 (tau_min + tau_max) / (delta - gamma + 1e-8)
                  (derivative of g with respect to x, gamma and delta); amp = 1 for a one-token span, where
                  x - gamma is exactly 0 on both sides.
  output          |o - o_ref| <= 4 E Vmax + (2^-21 + (BN + N/BN + n_items + 8) u) Vmax, E = max score error:
                  a perturbation E of every logit moves each normalised weight by at most 2E of itself,
                  sum_n dp_n = 0, so o moves by <= 2E max|v - o| <= 4E Vmax; the rest is the hi/lo split of p and
                  fp32 accumulation over tokens, tiles and partials.
"""
import itertools

import numpy as np

from decode_batch import DecodeBatch
from kernel_reference import TAU_MAX, TAU_MIN, VISUAL_LENGTHS, align16, clips, pack_codes, random_kv, ref_quantize


class Report:
    def __init__(self):
        self.rows = []

    def add(self, kernel, target, case, ok, detail):
        self.rows.append({"kernel": kernel, "target": target, "case": case, "ok": bool(ok), "detail": detail})
        print(f"{'ok  ' if ok else 'FAIL'} {target:7s} {kernel:34s} {case}: {detail}", flush=True)


def quantize_launch(dev, name, spans, kvh, bufs, clip_k, clip_v, tpp=1, scratch=None):
    """Launches quantize_pack over spans = [(src_off, src_cap, src_t0, tokens, code_off, scale_off)]: builds qs_tab
    (with chunk_first, chunk_count) and qc_tab as the Java QuantizePlan does. Returns the scratch (one int32 buffer:
    the counters sync, then the statistics, zeroed together before each launch as the Java side does) so a caller
    can reuse it."""
    cx = dev.constexprs(name)
    d, bt = cx["D"], cx["BT"]
    rows, qc = [], []
    for i, (src_off, cap, t0, t, code_off, sc_off) in enumerate(spans):
        n = -(-t // (bt * tpp))
        rows.append([src_off, cap, t0, t, code_off, sc_off, len(qc), n])
        qc += [i] * n
    groups = len(spans) * 2 * kvh
    if scratch is None:
        scratch = dev.upload(np.zeros(4 + 4 * groups + groups * 2 * d, np.int32))
    scratch.zero_()
    sync, stats = scratch[:4 + 4 * groups], scratch[4 + 4 * groups:]
    tab = dev.upload(np.array(rows, np.int64).reshape(-1, 8))
    qct = dev.upload(np.array(qc, np.int32))
    dev.launch(name, (2 * kvh * len(qc), 1, 1),
               [bufs["kin"], bufs["vin"], bufs["kcode"], bufs["vcode"], bufs["ksig"], bufs["kalp"], bufs["vsig"],
                bufs["valp"], tab, qct, stats, sync, clip_k, clip_v, kvh, tpp])
    return scratch, (tab, qct)


def check_quantize(dev, report, target, bits, d, seed, name=None):
    name = name or f"quantize_pack_b{bits}_d{d}"
    rng = np.random.default_rng(seed)
    kvh = 2 if d == 128 else 4
    rb = d * bits // 8
    lengths = VISUAL_LENGTHS + [int(x) for x in rng.integers(2, 300, 3)]
    spans, src_cur, code_cur, sc_cur = [], 0, 0, 0
    for t in lengths:
        t0 = int(rng.integers(0, 50))
        cap = t0 + t + int(rng.integers(0, 20))
        src_off = align16(src_cur + 16 * int(rng.integers(0, 3)))
        src_cur = src_off + kvh * cap * d
        code_off = align16(code_cur + 16 * int(rng.integers(0, 3)))
        code_cur = code_off + kvh * t * rb
        sc_off = align16(sc_cur + 16 * int(rng.integers(0, 3)))
        sc_cur = sc_off + kvh * d
        spans.append((src_off, cap, t0, t, code_off, sc_off))
    kin = np.full(src_cur + 16, np.nan, np.float16)
    vin = np.full(src_cur + 16, np.nan, np.float16)
    data = []
    for src_off, cap, t0, t, _, _ in spans:
        k, v = random_kv(rng, kvh, t, d)
        for h in range(kvh):
            r0 = src_off + (h * cap + t0) * d
            kin[r0:r0 + t * d] = k[h].reshape(-1)
            vin[r0:r0 + t * d] = v[h].reshape(-1)
        data.append((k, v))
    fill = rng.integers(0, 256, code_cur + 16, dtype=np.uint8)
    bufs = {n: dev.upload(a) for n, a in (("kin", kin), ("vin", vin), ("kcode", fill), ("vcode", fill.copy()))}
    for n in ("ksig", "kalp", "vsig", "valp"):
        bufs[n] = dev.upload(np.full(sc_cur + 16, np.nan, np.float32))
    ck, cv = clips(bits)
    scratch, _ = quantize_launch(dev, name, spans, kvh, bufs, ck, cv)
    got = {n: dev.download(bufs[n]) for n in ("kcode", "vcode", "ksig", "kalp", "vsig", "valp")}
    exp_code = {"kcode": fill.copy(), "vcode": fill.copy()}
    exp_sc = {n: np.full(sc_cur + 16, np.nan, np.float32) for n in ("ksig", "kalp", "vsig", "valp")}
    for (src_off, cap, t0, t, code_off, sc_off), (k, v) in zip(spans, data):
        for h in range(kvh):
            for x, clip, cn, sn, an in ((k, ck, "kcode", "ksig", "kalp"), (v, cv, "vcode", "vsig", "valp")):
                codes, sig, alp = ref_quantize(x[h], bits, clip)
                r0 = code_off + h * t * rb
                exp_code[cn][r0:r0 + t * rb] = pack_codes(codes, bits).reshape(-1)
                exp_sc[sn][sc_off + h * d:sc_off + (h + 1) * d] = sig
                exp_sc[an][sc_off + h * d:sc_off + (h + 1) * d] = alp
    bad_codes = sum(int((got[n] != exp_code[n]).sum()) for n in ("kcode", "vcode"))
    bad_scales = sum(int((got[n].view(np.uint32) != exp_sc[n].view(np.uint32)).sum()) for n in exp_sc)
    report.add(name, target, f"seed {seed} kvh {kvh} lengths {lengths}", bad_codes == 0 and bad_scales == 0,
               f"{bad_codes} code bytes and {bad_scales} scale words differ from the reference (0 allowed)")
    # again, several tiles per program (the re-reading path), on the same scratch
    for n in ("kcode", "vcode"):
        bufs[n].copy_(dev.upload(fill))
    for n in ("ksig", "kalp", "vsig", "valp"):
        bufs[n].fill_(float("nan"))
    quantize_launch(dev, name, spans, kvh, bufs, ck, cv, tpp=3, scratch=scratch)
    got = {n: dev.download(bufs[n]) for n in ("kcode", "vcode", "ksig", "kalp", "vsig", "valp")}
    bad_codes = sum(int((got[n] != exp_code[n]).sum()) for n in ("kcode", "vcode"))
    bad_scales = sum(int((got[n].view(np.uint32) != exp_sc[n].view(np.uint32)).sum()) for n in exp_sc)
    report.add(name, target, f"seed {seed} kvh {kvh} lengths {lengths} tiles per program 3",
               bad_codes == 0 and bad_scales == 0,
               f"{bad_codes} code bytes and {bad_scales} scale words differ from the reference (0 allowed)")


def run_decode(dev, batch, tabs, variant, minmax_variant, mode, clamp, sm_scale, bufs):
    """One decode step on the device; returns the output [S, Hq, D] and the counters afterwards."""
    s_n = len(batch.seqs)
    out = dev.upload(np.full(s_n * batch.hq * batch.d, np.nan, np.float32))
    if mode == 1 and tabs["n_mm"] > 0:
        dev.launch(minmax_variant, (tabs["n_mm"], batch.kvh, 1),
                   [bufs["q"], bufs["kcode"], bufs["ksig"], bufs["kalp"], bufs["seq"], bufs["span"], bufs["mm"],
                    bufs["mm_buf"], batch.kvh, batch.g, sm_scale])
    if variant.startswith("fp16_decode") or variant.startswith("x_fp16_decode"):
        dev.launch(variant, (tabs["n_work"], batch.kvh, 1),
                   [bufs["q"], bufs["kfp"], bufs["vfp"], bufs["seq"], bufs["work"], bufs["part_ml"],
                    bufs["part_acc"], bufs["counters"], out, batch.kvh, batch.g, sm_scale])
    else:
        dev.launch(variant, (tabs["n_work"], batch.kvh, 1),
                   [bufs["q"], bufs["kfp"], bufs["vfp"], bufs["kcode"], bufs["vcode"], bufs["ksig"], bufs["kalp"],
                    bufs["vsig"], bufs["valp"], bufs["seq"], bufs["span"], bufs["work"], bufs["mm_buf"],
                    bufs["part_ml"], bufs["part_acc"], bufs["counters"], out, batch.kvh, batch.g, sm_scale,
                    TAU_MIN, TAU_MAX, clamp])
    counters = dev.download(bufs["counters"])
    if mode == 3:  # the ticket and the rendezvous slots must be left empty too
        counters = np.concatenate([counters, dev.download(bufs["mm_buf"]).view(np.int32)])
    return dev.download(out).reshape(s_n, batch.hq, batch.d), counters


def slot_ints(n_spans, kvh):
    """int32 of mm_buf in mode 3: a header slot (the ticket) and one slot per (span, KV head)."""
    return (1 + n_spans * kvh) * 32


def upload_decode(dev, batch, tabs, mode=0):
    b = {"q": batch.q, "kfp": batch.kfp, "vfp": batch.vfp, "kcode": batch.kcode, "vcode": batch.vcode,
         "ksig": batch.scales[0], "kalp": batch.scales[1], "vsig": batch.scales[2], "valp": batch.scales[3],
         "seq": tabs["seq"], "span": tabs["span"], "work": tabs["work"], "mm": tabs["mm"]}
    bufs = {n: dev.upload(a) for n, a in b.items()}
    hq, d = batch.hq, batch.d
    if mode == 3:
        bufs["mm_buf"] = dev.upload(np.zeros(slot_ints(tabs["n_span"], batch.kvh), np.int32))
    else:
        bufs["mm_buf"] = dev.upload(np.full(max(1, tabs["n_mm"]) * hq * 2, np.nan, np.float32))
    bufs["part_ml"] = dev.upload(np.full(tabs["n_work"] * hq * 2, np.nan, np.float32))
    bufs["part_acc"] = dev.upload(np.full(tabs["n_work"] * hq * d, np.nan, np.float32))
    bufs["counters"] = dev.upload(np.zeros(len(batch.seqs) * batch.kvh, np.int32))
    return bufs


def check_decode(dev, report, target, variant, minmax_variant, bits, mode, seed, n_seq, kvh, g, clamps,
                 max_spans=3, fp_lengths=None, vis_chunks=(None, 1, 50, 256, 1000), fp_chunks=(None, 37, 64, 300),
                 span_lengths=None):
    rng = np.random.default_rng(seed)
    cx = dev.constexprs(variant)
    d, bn = cx["D"], cx["BN"]
    fp_lengths = fp_lengths or [int(x) for x in rng.integers(1, 300, 7)]
    batch = DecodeBatch(rng, n_seq, kvh, g, d, bits, fp_lengths, span_lengths or VISUAL_LENGTHS, max_spans)
    tabs = batch.tables(rng, mode, bn, list(fp_chunks), list(vis_chunks), [None, 100, 256, 2000], cx.get("CH"))
    bufs = upload_decode(dev, batch, tabs, mode)
    sm_scale = float(np.float32(1.0 / np.sqrt(d)))
    for clamp in clamps:
        got, counters = run_decode(dev, batch, tabs, variant, minmax_variant, mode, clamp, sm_scale, bufs)
        worst, n_bad, n_nan = 0.0, 0, 0
        for si in range(len(batch.seqs)):
            ref, tol = batch.reference(si, mode != 0 and bits != 0, clamp, sm_scale, bn, tabs["items_per_seq"][si])
            err = np.abs(got[si].astype(np.float64) - ref).max(axis=1)
            n_nan += int(np.isnan(got[si]).sum())
            ratio = np.where(np.isnan(err), np.inf, err / tol)
            worst = max(worst, float(ratio.max()))
            n_bad += int((ratio > 1).sum())
        ok = n_bad == 0 and n_nan == 0 and not counters.any()
        spans = sum(len(s["spans"]) for s in batch.seqs)
        report.add(variant, target,
                   f"seed {seed} B {n_seq} kvh {kvh} G {g} spans {spans} items {tabs['n_work']} clamp {clamp}", ok,
                   f"max err/tol {worst:.3g}, {n_bad} heads over tolerance, {n_nan} NaN, "
                   f"counters left non-zero: {int(counters.astype(bool).sum())}")


def check_append(dev, report, target, d, seed):
    name = f"append_token_d{d}"
    rng = np.random.default_rng(seed)
    kvh, n_seq = 4, 5
    rows, cur = [], 0
    for s in range(n_seq):
        cap = int(rng.integers(1, 30))
        length = cap if s == 2 else int(rng.integers(0, cap))  # sequence 2 is full: nothing may be written
        off = align16(cur + 16 * int(rng.integers(0, 3)))
        cur = off + kvh * cap * d
        rows.append([off, length, cap, 0, 0, 0])
    kfp = rng.standard_normal(cur + 16).astype(np.float16)
    vfp = rng.standard_normal(cur + 16).astype(np.float16)
    knew = rng.standard_normal(n_seq * kvh * d).astype(np.float16)
    vnew = rng.standard_normal(n_seq * kvh * d).astype(np.float16)
    bk, bv = dev.upload(kfp), dev.upload(vfp)
    dev.launch(name, (n_seq, kvh, 1), [bk, bv, dev.upload(knew), dev.upload(vnew),
                                       dev.upload(np.array(rows, np.int64)), kvh])
    ek, ev = kfp.copy(), vfp.copy()
    for s, (off, length, cap, _, _, _) in enumerate(rows):
        if length < cap:
            for h in range(kvh):
                r = off + (h * cap + length) * d
                ek[r:r + d] = knew[(s * kvh + h) * d:(s * kvh + h + 1) * d]
                ev[r:r + d] = vnew[(s * kvh + h) * d:(s * kvh + h + 1) * d]
    gk, gv = dev.download(bk), dev.download(bv)
    bad = int((gk.view(np.uint16) != ek.view(np.uint16)).sum() + (gv.view(np.uint16) != ev.view(np.uint16)).sum())
    report.add(name, target, f"seed {seed} B {n_seq} kvh {kvh} (one full block)", bad == 0,
               f"{bad} elements differ (0 allowed)")


def run_checks(dev, target, report, seed0, quick=False):
    seed = itertools.count(seed0)
    names = set(dev.names())
    for d in (64, 128):
        if f"append_token_d{d}" in names:
            check_append(dev, report, target, d, next(seed))
        for bits in (1, 2, 4, 8):
            if f"quantize_pack_b{bits}_d{d}" in names:
                check_quantize(dev, report, target, bits, d, next(seed))
        if f"fp16_decode_d{d}" in names:
            check_decode(dev, report, target, f"fp16_decode_d{d}", None, 0, 0, next(seed), 6, 2, 4, [0],
                         fp_lengths=[1, 7, 255, 3433, 10000, 64], fp_chunks=(None, 16, 64, 1000, 3000))
    configs = itertools.cycle([(1, 1, 1), (5, 2, 4), (3, 4, 8), (17, 2, 2)])  # (B, kvh, G)
    for d in (64, 128):
        for bits in (1, 2, 4):
            for mode in (0, 1, 2, 3):
                v = f"calibquant_decode_b{bits}_d{d}_mm{mode}"
                if v not in names:
                    continue
                b, kvh, g = next(configs)
                check_decode(dev, report, target, v, f"calibquant_minmax_b{bits}_d{d}", bits, mode, next(seed),
                             b, kvh, g, [0] if mode == 0 else [0, 1])
    for d in (64, 128):  # the 1-bit variants for groups of up to 4 query heads
        for mode in (0, 1, 2, 3):
            v = f"calibquant_decode_b1_d{d}_mm{mode}_hs4"
            if v in names:
                b, kvh, g = ((5, 2, 4), (3, 3, 3), (17, 2, 1), (6, 3, 4))[mode]
                check_decode(dev, report, target, v, f"calibquant_minmax_b1_d{d}_hs4", 1, mode, next(seed), b, kvh, g,
                             [0] if mode == 0 else [0, 1])
    if not quick:  # a large batch: B = 256, G = 4, one span each
        v = "calibquant_decode_b1_d128_mm1"
        if v in names:
            check_decode(dev, report, target, v, "calibquant_minmax_b1_d128", 1, 1, next(seed), 256, 2, 4, [0],
                         max_spans=1, fp_lengths=[105, 3, 200], vis_chunks=(None, 512), span_lengths=[1, 7, 255, 600])
        for v, g in (("calibquant_decode_b1_d128_mm3_hs4", 4), ("calibquant_decode_b1_d128_mm3", 8)):
            if v in names:  # the rendezvous with many groups in flight, and long spans in many items (10,000 tokens)
                check_decode(dev, report, target, v, None, 1, 3, next(seed), 256, 2, g, [0], max_spans=1,
                             fp_lengths=[105, 3, 200], vis_chunks=(None, 64, 512),
                             span_lengths=[1, 7, 255, 600, 3328])
                check_decode(dev, report, target, v, None, 1, 3, next(seed), 2, 8, g, [0, 1], max_spans=2,
                             fp_lengths=[105], vis_chunks=(None, 32, 64), span_lengths=[10000, 3328])
