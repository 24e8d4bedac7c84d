"""Screening tool: the built-in scene model end to end with a quantized visual KV cache, in NumPy on the CPU.

Decode rows (positions >= prompt length) read quantized visual K/V (stored fp16, quantized per KV head and channel
over the visual span); prefill rows read exact K/V, as the project's cache does. It reproduces `calibquant demo
--table` within an image (2,000 images: fp16 78.7 vs 78.6 %, 1 bit about the midpoint 73.2 vs 73.3 %), so quantizer
ideas can be screened before they are built; the project's own table stays the record. Each row prints exact match,
its paired difference from the first row with a 95 % interval, and exact match per question kind.

Usage (from the project root): python3 tools/model/emulate_quantized_cache.py [--question-after-image] . N_IMAGES CONFIG...
(--question-after-image: as `demo --question-after-image`, the question's rows read the quantized cache too)
CONFIG: fp16 | paper:BITS:CK:CV:cal|nocal | mid:BITS:CK:CV:cal|nocal (clip about the channel midpoint) |
lloyd:1:-:-:cal|nocal | lsq:BITS:-:-:cal|nocal | kl2vl1:-:-:cal|nocal | k2vmid:CV:cal|nocal (2-bit keys, 1-bit values
about the midpoint) | kmix:FRAC:CK:CV:cal|nocal (the FRAC widest key channels of each head at 2 bits, the rest and the
values 1 bit about the midpoint) | kmixh:...: kmix with every offset and scale rounded to fp16 |
auto:C1/C2/...:half|full:cal|nocal (1 bit about the midpoint, each KV head's key and value clips picked from the list
at prefill by the attention of the text after the image: keys by KL, values by output error) |
rot:CK:CV:cal|nocal (keys rotated per head by a fixed random orthogonal matrix before 1-bit midpoint quantization) |
tokscale:CK:CV:cal|nocal (1-bit midpoint keys with a least-squares fp16 factor per token; CK cancels out) |
kmixq:FRAC:CK:CV:cal|nocal (kmixh, the 2-bit key channels picked by the prompt's text queries, q_c^2 times range^2) |
alloc:KF:VF:CK:CV:cal|nocal (per layer and KV head, the fraction of key and value channels at 2 bits; see Allocation) |
allocz:KF:KZ:CK:CV:cal|nocal (alloc, values all 1 bit, and per unit the fraction KZ of narrowest key channels dropped:
stored as their fp16 midpoint only)
(first written in ../shared/tools; moved here with kmix, kmixh and the paired differences, 2026-12-07)"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import npmodel as M  # noqa: E402
import scenes as S  # noqa: E402

W = None
C = M.scene_config()
dt = np.float32


def f(name):
    return W[name].astype(dt)

def q_paper(X, bits, c, half=False):  # X [H, N, D]; the paper: range scaled toward zero
    L = 2 ** bits - 1; a = c * X.min(1, keepdims=True); b = c * X.max(1, keepdims=True); s = (b - a) / L
    if half: a = h(a); s = h(s)
    safe = np.where(s > 0, s, 1)
    code = np.where(s > 0, np.clip(np.round((X - a) / safe), 0, L), 0)
    return a + s * code
def h(x):
    return x.astype(np.float16).astype(x.dtype)
h_ = h
def q_mid(X, bits, c, half=False):  # range scaled about the channel's midpoint
    L = 2 ** bits - 1; lo = X.min(1, keepdims=True); hi = X.max(1, keepdims=True); m = (lo + hi) / 2; r = (hi - lo) / 2
    a = m - c * r; s = 2 * c * r / L
    if half: a = h(a); s = h(s)
    safe = np.where(s > 0, s, 1)
    code = np.where(s > 0, np.clip(np.round((X - a) / safe), 0, L), 0)
    return a + s * code
def q_lloyd1(X, iters=3):  # 1 bit, MSE-optimal levels per channel
    t = X.mean(1, keepdims=True)
    for _ in range(iters):
        hi = X > t; n = hi.sum(1, keepdims=True); tot = X.shape[1]
        mh = np.where(n > 0, (X * hi).sum(1, keepdims=True) / np.maximum(n, 1), t)
        ml = np.where(n < tot, (X * ~hi).sum(1, keepdims=True) / np.maximum(tot - n, 1), t)
        t = (mh + ml) / 2
    return np.where(X > t, mh, ml)
def q_lsq(X, bits, iters=6):  # uniform grid alpha + sigma*code, least-squares fitted per channel
    L = 2 ** bits - 1; a = X.min(1, keepdims=True); s = (X.max(1, keepdims=True) - a) / L; s = np.where(s > 0, s, 1e-30)
    for _ in range(iters):
        code = np.clip(np.round((X - a) / s), 0, L)
        cm = code.mean(1, keepdims=True); xm = X.mean(1, keepdims=True)
        var = ((code - cm) ** 2).mean(1, keepdims=True); cov = ((code - cm) * (X - xm)).mean(1, keepdims=True)
        s = np.where(var > 0, cov / np.maximum(var, 1e-30), s); s = np.where(np.abs(s) > 1e-30, s, 1e-30); a = xm - s * cm
    return a + s * np.clip(np.round((X - a) / s), 0, L)

def make(cfg):
    """cfg like 'paper:1:0.5:0.3:cal' | 'mid:1:0.5:0.3:nocal' | 'lloyd:1:-:-:nocal' | 'fp16' | 'mix:kbits:vbits'"""
    p = cfg.split(":")
    if p[0] == "fp16": return None, None, False
    cal = p[-1] == "cal"
    if p[0] == "paper": b = int(p[1]); return (lambda X: q_paper(X, b, float(p[2]))), (lambda X: q_paper(X, b, float(p[3]))), cal
    if p[0] == "mid": b = int(p[1]); return (lambda X: q_mid(X, b, float(p[2]))), (lambda X: q_mid(X, b, float(p[3]))), cal
    if p[0] == "lloyd": return q_lloyd1, q_lloyd1, cal
    if p[0] == "lsq": b = int(p[1]); return (lambda X: q_lsq(X, b)), (lambda X: q_lsq(X, b)), cal
    if p[0] == "kl2vl1": return (lambda X: q_lsq(X, 2)), q_lloyd1, cal
    if p[0] == "kp2vl1": return (lambda X: q_paper(X, 2, 1.0)), q_lloyd1, cal
    if p[0] == "k2vmid": return (lambda X: q_paper(X, 2, 1.0)), (lambda X: q_mid(X, 1, float(p[1]))), cal
    if p[0] == "kmix":  # keys: the widest FRAC of channels per head at 2 bits (full range), the rest 1 bit about the midpoint CK
        fr = float(p[1]); ck = float(p[2]); cv = float(p[3])
        return (lambda X: q_kmix(X, fr, ck)), (lambda X: q_mid(X, 1, cv)), cal
    if p[0] == "kmixh":  # kmix with every offset and scale stored as fp16
        fr = float(p[1]); ck = float(p[2]); cv = float(p[3])
        return (lambda X: q_kmix(X, fr, ck, half=True)), (lambda X: q_mid(X, 1, cv, half=True)), cal
    if p[0] == "rot":  # keys rotated per head by a fixed random orthogonal matrix, quantized, rotated back (values: mid)
        ck = float(p[1]); cv = float(p[2])
        return (lambda X: q_rotated(X, ck)), (lambda X: q_mid(X, 1, cv, True)), cal
    if p[0] == "tokscale":  # keys: 1 bit about the midpoint times a per-token fp16 factor (least squares); values: mid
        ck = float(p[1]); cv = float(p[2])
        return (lambda X: q_token_scaled(X, ck)), (lambda X: q_mid(X, 1, cv, True)), cal
    if p[0] == "alloc":  # per (layer, KV head): the fraction of key / value channels at 2 bits (see Allocation)
        return Allocation(p[1], p[2], float(p[3]), float(p[4])), None, cal
    if p[0] == "allocz":  # alloc with, per unit, a fraction KZ of the narrowest key channels dropped (see Allocation)
        return Allocation(p[1], "0", float(p[3]), float(p[4]), zero=p[2]), None, cal
    if p[0] == "kmixq":  # kmixh, the 2-bit key channels picked by the prompt's text queries (see pick_key_channels)
        return ("kmixq", float(p[1]), float(p[2]), float(p[3])), None, cal
    if p[0] == "auto":  # 1 bit about the midpoint; per KV head, key and value clips picked at prefill (see pick_clips)
        return ("auto", [float(x) for x in p[1].split("/")], p[2] == "half"), None, cal
    raise SystemExit("unknown config " + cfg)


def kmix_by_queries(q, k, v, vs, nv, rows, frac, ck, cv):
    """kmixh whose 2-bit key channels are, per KV head, those that move the scores of the prompt's text rows most:
    mean q_c^2 over those rows and the head's query heads, times the channel's range squared. fp16 parameters."""
    G = q.shape[0] // k.shape[0]; K = k[:, vs:vs + nv].astype(np.float64); out = q_mid(K, 1, ck, True)
    two = q_paper(K, 2, 1.0, True); n = int(round(frac * K.shape[2]))
    rng = K.max(1) - K.min(1)  # [H, D]
    for hh in range(K.shape[0]):
        qs = q[hh * G:(hh + 1) * G, list(rows)].astype(np.float64)
        weight = (qs ** 2).mean((0, 1)) * rng[hh] ** 2
        idx = np.argsort(-weight)[:n]
        out[hh][:, idx] = two[hh][:, idx]
    return out, q_mid(v[:, vs:vs + nv].astype(np.float64), 1, cv, True)


def pick_clips(q, k, v, vs, nv, rows, grid, half):
    """Per KV head, the key clip whose quantized keys give the prompt's rows `rows` (the text after the image: they
    read the image as decode steps will) attention over the visual span closest to exact (KL), then the value clip
    whose values give the closest attention output under exact attention. Quantized about the midpoint, 1 bit."""
    G = q.shape[0] // k.shape[0]; D = k.shape[2]; kq = np.empty_like(k[:, vs:vs + nv]); vq = np.empty_like(kq)
    for hh in range(k.shape[0]):
        qs = q[hh * G:(hh + 1) * G, rows]  # [G, R, D]
        K = k[hh:hh + 1, vs:vs + nv].astype(np.float64); V = v[hh:hh + 1, vs:vs + nv].astype(np.float64)
        s = qs @ K[0].T / np.sqrt(D); p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
        best = None
        for c in grid:
            Kq = q_mid(K, 1, c, half)
            t = qs @ Kq[0].T / np.sqrt(D); r = np.exp(t - t.max(-1, keepdims=True)); r /= r.sum(-1, keepdims=True)
            kl = float((p * (np.log(p + 1e-30) - np.log(r + 1e-30))).sum(-1).mean())
            if best is None or kl < best[0]: best = (kl, Kq)
        kq[hh] = best[1][0]
        o = p @ V[0]; best = None
        for c in grid:
            Vq = q_mid(V, 1, c, half); e = float(((p @ Vq[0] - o) ** 2).sum())
            if best is None or e < best[0]: best = (e, Vq)
        vq[hh] = best[1][0]
    return kq, vq

def q_kmix(X, frac, ck, half=False):
    return q_mixed(X, [frac] * X.shape[0], ck, half)


def q_mixed(X, fracs, c, half=False):
    """Per head h, the round(fracs[h] * D) widest channels at 2 bits (full range), the rest 1 bit about the midpoint."""
    rng = X.max(1) - X.min(1)  # [H, D]
    out = q_mid(X, 1, c, half); two = None
    for h, frac in enumerate(fracs):
        k = int(round(frac * X.shape[2]))
        if k > 0:
            two = q_paper(X, 2, 1.0, half) if two is None else two
            idx = np.argsort(-rng[h])[:k]
            out[h][:, idx] = two[h][:, idx]
    return out


class Allocation:
    """alloc:KF:VF:CK:CV:cal|nocal. KF and VF: comma-separated fractions of key and value channels at 2 bits, one per
    (layer, KV head), layer-major (a single number: every unit); the others 1 bit about the midpoint (CK, CV). Offsets
    and scales fp16. KV bytes: each 2-bit channel adds one bit per token."""

    def __init__(self, kf, vf, ck, cv, zero="0"):
        units = C["layers"] * C["kv_heads"]
        self.kf, self.vf, self.kz = (self._parse(x, units) for x in (kf, vf, zero)); self.ck, self.cv = ck, cv

    @staticmethod
    def _parse(text, units):
        xs = [float(x) for x in text.split(",")]
        xs = xs * units if len(xs) == 1 else xs
        if len(xs) != units or not all(0 <= x <= 1 for x in xs):
            raise SystemExit(f"alloc: {units} fractions in [0, 1] expected, got {text}")
        return xs

    def _of(self, xs, layer):
        h = C["kv_heads"]; return xs[layer * h:(layer + 1) * h]

    def keys(self, X, layer):
        out = q_mixed(X, self._of(self.kf, layer), self.ck, True)
        for h, z in enumerate(self._of(self.kz, layer)):  # dropped: the narrowest channels, rebuilt as their midpoint
            k = int(round(z * X.shape[2]))
            if k > 0:
                rng = X[h].max(0) - X[h].min(0)
                idx = np.argsort(rng)[:k]
                out[h][:, idx] = h_(((X[h].max(0) + X[h].min(0)) / 2)[idx])[None, :]
        return out

    def values(self, X, layer):
        return q_mixed(X, self._of(self.vf, layer), self.cv, True)

    def two_bit_fraction(self):
        """The fraction of all visual key and value channels stored at 2 bits (of 2 * units * D)."""
        return (sum(self.kf) + sum(self.vf)) / (2 * len(self.kf))

_ROT = {}


def rotation(D):
    """A fixed random orthogonal D x D matrix (QR of a seeded Gaussian): the same for every head and image."""
    if D not in _ROT:
        qm, r = np.linalg.qr(np.random.default_rng(2502).standard_normal((D, D)))
        _ROT[D] = qm * np.sign(np.diag(r))[None, :]
    return _ROT[D]


def q_rotated(X, ck):
    R = rotation(X.shape[2])
    return q_mid(X @ R, 1, ck, True) @ R.T


def q_token_scaled(X, ck):
    """1 bit about the midpoint, then each token's row scaled about the channel midpoints by the least-squares factor
    (stored as fp16: 2 bytes per token and head)."""
    lo = X.min(1, keepdims=True); hi = X.max(1, keepdims=True); m = (lo + hi) / 2
    Y = q_mid(X, 1, ck, True) - m; Z = X - m
    a = (Y * Z).sum(2, keepdims=True) / np.maximum((Y * Y).sum(2, keepdims=True), 1e-30)
    return m + h(a) * Y


def forward(visual, tokens, vs, nv, prompt_len, qk, qv, cal):
    T = len(tokens); x = f("language.embed.weight")[np.asarray(tokens)].copy(); x[vs:vs + nv] = visual
    qh, kvh, D = C["query_heads"], C["kv_heads"], C["head_dim"]; G = qh // kvh
    cos, sin = M.rope_tables(T, D, C["rope_theta"]); cos, sin = cos.astype(dt), sin.astype(dt)
    mask = np.triu(np.ones((T, T), dtype=bool), 1); eps = C["rms_eps"]
    for i in range(C["layers"]):
        b = f"language.layers.{i}."
        h = M._rms_norm(x, f(b + "attn_norm.weight"), eps)
        q = M._rotate((h @ f(b + "attn.q.weight").T).reshape(T, qh, D), cos, sin).transpose(1, 0, 2)
        k = M._rotate((h @ f(b + "attn.k.weight").T).reshape(T, kvh, D), cos, sin).transpose(1, 0, 2)
        v = (h @ f(b + "attn.v.weight").T).reshape(T, kvh, D).transpose(1, 0, 2)
        k = k.astype(np.float16).astype(dt); v = v.astype(np.float16).astype(dt)  # the cache stores fp16
        s = q @ np.repeat(k, G, 0).transpose(0, 2, 1) / np.sqrt(D).astype(dt)
        s = np.where(mask[None], -np.inf, s)
        vv = np.repeat(v, G, 0)
        if qk is not None and T > prompt_len:
            if isinstance(qk, tuple) and qk[0] == "kmixq":
                kq, vq = kmix_by_queries(q, k, v, vs, nv, range(vs + nv, prompt_len), qk[1], qk[2], qk[3])
                kq, vq = kq.astype(dt), vq.astype(dt)
            elif isinstance(qk, tuple):
                kq, vq = pick_clips(q, k, v, vs, nv, range(vs + nv, prompt_len), qk[1], qk[2])
                kq, vq = kq.astype(dt), vq.astype(dt)
            else:
                K = k[:, vs:vs + nv].astype(np.float64); V = v[:, vs:vs + nv].astype(np.float64)
                if isinstance(qk, Allocation):
                    kq, vq = qk.keys(K, i).astype(dt), qk.values(V, i).astype(dt)
                else:
                    kq = qk(K).astype(dt); vq = qv(V).astype(dt)
            sd = q[:, prompt_len:] @ np.repeat(kq, G, 0).transpose(0, 2, 1) / np.sqrt(D).astype(dt)  # decode rows' visual scores
            if cal:
                g = sd.min(-1, keepdims=True); d = sd.max(-1, keepdims=True)
                sd = (sd - g) / (d - g + 1e-8) * ((d - 3.0) - g) + g
            s[:, prompt_len:, vs:vs + nv] = sd
            p = M._softmax(s)
            vrep = np.repeat(vq, G, 0)
            a = p @ vv
            a[:, prompt_len:] += p[:, prompt_len:, vs:vs + nv] @ (vrep - vv[:, vs:vs + nv])
        else:
            a = M._softmax(s) @ vv
        a = a.transpose(1, 0, 2).reshape(T, qh * D)
        x = x + a @ f(b + "attn.o.weight").T
        h = M._rms_norm(x, f(b + "mlp_norm.weight"), eps)
        gg = h @ f(b + "mlp.gate.weight").T
        x = x + (gg / (1 + np.exp(-gg)) * (h @ f(b + "mlp.up.weight").T)) @ f(b + "mlp.down.weight").T
    return M._rms_norm(x, f("language.norm.weight"), eps) @ f("language.lm_head.weight").T

def evaluate(root, n, configs, out=print, after_image=False):
    """Answers the first n test images under each config; per config its list of exact-match outcomes. after_image:
    the question is asked after the image's cache was quantized (Java's demo --question-after-image): every row after
    the image reads the quantized visual cache, the question's rows included."""
    global W
    W, _ = M.read_safetensors(f"{root}/src/cli/main/resources/dev/calibquant/model/model.safetensors")
    s = S.generate(S.TEST_SEED, 0, n); images = S.render(s, np); nv = (C["image_size"] // C["patch_size"]) ** 2
    vis = [M.encode(W, C, images[i], dt) for i in range(n)]
    outcomes = {}
    for cfg in configs:
        qk, qv, cal = make(cfg); t0 = time.time(); bytype = {}
        for i in range(n):
            toks = S.prompt_tokens(s["question"][i], s["qlen"][i], nv); vs = len(S.PREFIX); ans = []
            pl = vs + nv + 1 if after_image else len(toks)  # the first row that reads the quantized cache
            for _ in range(S.MAX_ANSWER):
                nxt = int(forward(vis[i], toks, vs, nv, pl, qk, qv, cal)[-1].argmax()); ans.append(nxt)
                toks = toks + [nxt]
                if nxt == S.EOS:
                    break
            ok = ans == list(s["answer"][i, :s["alen"][i]])
            outcomes.setdefault(cfg, []).append(ok)
            bytype.setdefault(int(s["qtype"][i]), []).append(ok)
        bt = " ".join(f"{S.QUESTION_TYPES[t][:8]} {100 * np.mean(v):.0f}" for t, v in sorted(bytype.items()))
        d = np.array(outcomes[cfg], float) - np.array(outcomes[configs[0]], float)
        hw = 1.96 * d.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
        out(f"{cfg:28s} exact {100 * np.mean(outcomes[cfg]):5.1f} %  vs first {100 * d.mean():+5.1f} ± {100 * hw:.1f}"
            f"  [{bt}]   {time.time() - t0:.0f} s")
    return outcomes


if __name__ == "__main__":
    args = sys.argv[1:]
    after = "--question-after-image" in args
    args = [a for a in args if a != "--question-after-image"]
    evaluate(args[0], int(args[1]), args[2:], out=lambda line: print(line, flush=True), after_image=after)
