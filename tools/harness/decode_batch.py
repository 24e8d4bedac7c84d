"""Decode batches for the kernel harness: pools and tables exactly as ptx/README.md describes them, filled from
seeded random sequences, and the float64 reference attention over them."""
import itertools

import numpy as np

from kernel_reference import TAU_MAX, TAU_MIN, U, align16, clips, pack_codes, random_kv, ref_quantize


class DecodeBatch:
    """Host image of one decode step: pools with NaN/random padding, the tables, and the reference data."""

    def __init__(self, rng, n_seq, kvh, g, d, bits, fp_lengths, span_lengths, max_spans):
        self.kvh, self.g, self.d, self.bits = kvh, g, d, bits
        self.hq = kvh * g
        rb = d * bits // 8 if bits else 0
        gap = lambda: 16 * int(rng.integers(0, 3))
        lengths = itertools.cycle(span_lengths)
        fp_cycle = itertools.cycle(fp_lengths)
        self.seqs = []
        fp_cur = code_cur = sc_cur = q_cur = 0
        for si in range(n_seq):
            # odd sequences (and a lone one) get a small query: their visual score spread falls below
            # tau_min + tau_max, where calibration inverts (clamp 0) or flattens (clamp 1) the scores; they carry
            # at least two spans, so at least one of more than one token
            small_q = si % 2 == 1 or n_seq == 1
            fp_len = int(next(fp_cycle))
            fp_cap = fp_len + int(rng.integers(0, 40))
            fp_off = align16(fp_cur + gap())
            fp_cur = fp_off + kvh * fp_cap * d
            q_off = align16(q_cur + gap())
            q_cur = q_off + self.hq * d
            spans = []
            n_spans = int(rng.integers(min(2, max_spans) if small_q else 0, max_spans + 1)) if bits else 0
            for _ in range(n_spans):
                t = int(next(lengths))
                code_off = align16(code_cur + gap())
                code_cur = code_off + kvh * t * rb
                sc_off = align16(sc_cur + gap())
                sc_cur = sc_off + kvh * d
                spans.append({"tokens": t, "code_off": code_off, "sc_off": sc_off})
            self.seqs.append({"fp_len": fp_len, "fp_cap": fp_cap, "fp_off": fp_off, "q_off": q_off, "spans": spans,
                              "q_scale": 0.03 if small_q else 1.0})
        # pools: padding is NaN (fp) or random bytes (codes), so stray reads show
        self.kfp = np.full(fp_cur + 16, np.nan, np.float16)
        self.vfp = np.full(fp_cur + 16, np.nan, np.float16)
        self.q = np.full(q_cur + 16, np.nan, np.float16)
        self.kcode = rng.integers(0, 256, code_cur + 16, dtype=np.uint8)
        self.vcode = rng.integers(0, 256, code_cur + 16, dtype=np.uint8)
        self.scales = [np.full(sc_cur + 16, np.nan, np.float32) for _ in range(4)]  # ksig, kalp, vsig, valp
        ck, cv = clips(bits) if bits else (1.0, 1.0)
        for si, s in enumerate(self.seqs):
            kf, vf = random_kv(rng, kvh, s["fp_len"], d)
            s["K"], s["V"] = kf.astype(np.float64), vf.astype(np.float64)
            for h in range(kvh):
                r0 = s["fp_off"] + h * s["fp_cap"] * d
                self.kfp[r0:r0 + s["fp_len"] * d] = kf[h].reshape(-1)
                self.vfp[r0:r0 + s["fp_len"] * d] = vf[h].reshape(-1)
            qv = rng.standard_normal((self.hq, d)) * s["q_scale"]
            qv = qv.astype(np.float16)
            qv[qv == 0] = 1e-3
            s["qv"] = qv.astype(np.float64)
            self.q[s["q_off"]:s["q_off"] + self.hq * d] = qv.reshape(-1)
            for sp in s["spans"]:
                t = sp["tokens"]
                kx, vx = random_kv(rng, kvh, t, d)
                khat = np.empty((kvh, t, d))
                vhat = np.empty((kvh, t, d))
                sabs = np.empty((kvh, t, d))  # |alpha| + |sigma| code, per element, for the error bound
                for h in range(kvh):
                    for x, clip, pool, hat, ci in ((kx, ck, self.kcode, khat, 0), (vx, cv, self.vcode, vhat, 2)):
                        codes, sig, alp = ref_quantize(x[h], bits, clip)
                        r0 = sp["code_off"] + h * t * rb
                        pool[r0:r0 + t * rb] = pack_codes(codes, bits).reshape(-1)
                        self.scales[ci][sp["sc_off"] + h * d:sp["sc_off"] + (h + 1) * d] = sig
                        self.scales[ci + 1][sp["sc_off"] + h * d:sp["sc_off"] + (h + 1) * d] = alp
                        hat[h] = alp.astype(np.float64)[None, :] + sig.astype(np.float64)[None, :] * codes
                        if ci == 0:
                            sabs[h] = np.abs(alp)[None, :] + np.abs(sig)[None, :] * codes
                sp["Khat"], sp["Vhat"], sp["Kabs"] = khat, vhat, sabs
        self.span_list = [sp for s in self.seqs for sp in s["spans"]]
        for i, sp in enumerate(self.span_list):
            sp["index"] = i

    def tables(self, rng, mode, bn, fp_chunks, vis_chunks, mm_chunks, ch=None):
        """seq_tab [S,6], span_tab [NS,5], work_tab [NW,4], mm_tab [NC,4] (int64). mode 2: whole-span items;
        mode 3: items of at most ch tokens, a span's items in consecutive rows, their count in its mm_count."""
        work, seq_rows = [], []
        n_items = {}
        if mode == 3:
            vis_chunks = [ch if c is None else min(c, ch) for c in vis_chunks]
        for si, s in enumerate(self.seqs):
            blocks = []  # one block per full-precision item, one per span (whose items stay together)
            for t0, tn in chunked(s["fp_len"], rng, fp_chunks):
                blocks.append([[si, -1, t0, tn]])
            for sp in s["spans"]:
                parts = [(0, sp["tokens"])] if mode == 2 else chunked(sp["tokens"], rng, vis_chunks)
                n_items[sp["index"]] = len(parts)
                blocks.append([[si, sp["index"], t0, tn] for t0, tn in parts])
            if mode == 3:
                items = []
                for j in rng.permutation(len(blocks)):
                    items += [blocks[j][i] for i in rng.permutation(len(blocks[j]))]
            else:
                flat = [it for b in blocks for it in b]
                items = [flat[i] for i in rng.permutation(len(flat))]
            seq_rows.append([s["fp_off"], s["fp_len"], s["fp_cap"], s["q_off"], len(work), len(items)])
            work.extend(items)
        mm, span_rows = [], []
        for sp in self.span_list:
            si = next(i for i, s in enumerate(self.seqs) if sp in s["spans"])
            if mode == 3:
                span_rows.append([sp["code_off"], sp["tokens"], sp["sc_off"], 0, n_items[sp["index"]]])
                continue
            parts = chunked(sp["tokens"], rng, mm_chunks)
            span_rows.append([sp["code_off"], sp["tokens"], sp["sc_off"], len(mm), len(parts)])
            mm.extend([si, sp["index"], t0, tn] for t0, tn in parts)
        as_table = lambda rows, cols: np.array(rows, np.int64).reshape(-1, cols) if rows else np.zeros((1, cols),
                                                                                                       np.int64)
        return {"seq": as_table(seq_rows, 6), "span": as_table(span_rows, 5), "work": as_table(work, 4),
                "mm": as_table(mm, 4), "n_work": len(work), "n_mm": len(mm), "n_span": len(span_rows),
                "items_per_seq": [r[5] for r in seq_rows]}

    def reference(self, si, calibrate, clamp, sm_scale, bn, n_items):
        """float64 output [Hq, D] of sequence si and the per-head absolute tolerance (module docstring)."""
        s = self.seqs[si]
        g, d = self.g, self.d
        q = s["qv"]  # [Hq, D]
        heads = np.arange(self.hq) // g
        kf, vf = s["K"][heads], s["V"][heads]  # [Hq, n, D]
        scores = [np.einsum("hnd,hd->hn", kf, q) * sm_scale]
        s_abs = [np.einsum("hnd,hd->hn", np.abs(kf), np.abs(q)) * sm_scale]
        values = [vf]
        amps = [np.ones((self.hq, 1))]
        for sp in s["spans"]:
            kh, vh = sp["Khat"][heads], sp["Vhat"][heads]
            x = np.einsum("hnd,hd->hn", kh, q) * sm_scale
            xa = np.einsum("hnd,hd->hn", sp["Kabs"][heads], np.abs(q)) * sm_scale
            amp = np.ones((self.hq, 1))
            if calibrate:
                gam = x.min(axis=1, keepdims=True)
                dlt = x.max(axis=1, keepdims=True)
                num = (dlt - TAU_MAX) - (gam + TAU_MIN)
                den = dlt - gam + 1e-8
                a = num / den
                if clamp:
                    a = np.maximum(a, 0.0)
                x = (x - gam) * a + (gam + TAU_MIN)
                if sp["tokens"] > 1:
                    amp = 1 + 2 * np.abs(a) + 2 * (TAU_MIN + TAU_MAX) / den
            scores.append(x)
            s_abs.append(xa)
            values.append(vh)
            amps.append(amp)
        sc = np.concatenate(scores, axis=1)
        sa = np.concatenate(s_abs, axis=1)
        amp = np.concatenate([np.broadcast_to(a, s_.shape) for a, s_ in zip(amps, scores)], axis=1)
        vals = np.concatenate(values, axis=1)
        m = sc.max(axis=1, keepdims=True)
        p = np.exp(sc - m)
        o = np.einsum("hn,hnd->hd", p, vals) / p.sum(axis=1, keepdims=True)
        n = sc.shape[1]
        e_s = ((2.0 ** -21 + (d + 2) * U) * sa + 2.0 ** -22 * (np.abs(sc) + np.abs(m) + 4)) * amp
        e_max = e_s.max(axis=1)
        vmax = np.abs(vals).max(axis=(1, 2))
        tol = 4 * e_max * vmax + (2.0 ** -21 + (bn + n / bn + n_items + 8) * U) * vmax
        return o, tol


def chunked(n, rng, choices):
    """Random split of [0, n) into consecutive (t0, tn) pieces, piece sizes drawn from choices (None: whole)."""
    parts, t0 = [], 0
    while t0 < n:
        c = choices[int(rng.integers(0, len(choices)))]
        tn = n - t0 if c is None else min(c, n - t0)
        parts.append((t0, tn))
        t0 += tn
    return parts
