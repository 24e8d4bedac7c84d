"""Screening tool: the built-in scene model end to end with a quantized visual KV cache, in NumPy on the CPU.

Decode rows (positions >= prompt length) read quantized visual K/V (stored fp16, quantized per KV head and channel
over the visual span); prefill rows read exact K/V, as the project's cache does. It reproduces `calibquant demo
--table` within an image (2,000 images: fp16 78.7 vs 78.6 %, 1 bit about the midpoint 73.2 vs 73.3 %), so quantizer
ideas can be screened before they are built; the project's own table stays the record. Each row prints exact match,
its paired difference from the first row with a 95 % interval, and exact match per question kind.

Usage (from the project root): python3 tools/model/emulate_quantized_cache.py . N_IMAGES CONFIG...
CONFIG: fp16 | paper:BITS:CK:CV:cal|nocal | mid:BITS:CK:CV:cal|nocal (clip about the channel midpoint) |
lloyd:1:-:-:cal|nocal | lsq:BITS:-:-:cal|nocal | kl2vl1:-:-:cal|nocal | k2vmid:CV:cal|nocal (2-bit keys, 1-bit values
about the midpoint) | kmix:FRAC:CK:CV:cal|nocal (the FRAC widest key channels of each head at 2 bits, the rest and the
values 1 bit about the midpoint) | kmixh:...: kmix with every offset and scale rounded to fp16
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
    raise SystemExit("unknown config " + cfg)

def q_kmix(X, frac, ck, half=False):
    rng = X.max(1) - X.min(1)  # [H, D]
    k = int(round(frac * X.shape[2]))
    out = q_mid(X, 1, ck, half)
    if k > 0:
        idx = np.argsort(-rng, axis=1)[:, :k]
        two = q_paper(X, 2, 1.0, half)
        for h in range(X.shape[0]):
            out[h][:, idx[h]] = two[h][:, idx[h]]
    return out

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
            kq = qk(k[:, vs:vs + nv].astype(np.float64)).astype(dt); vq = qv(v[:, vs:vs + nv].astype(np.float64)).astype(dt)
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

def evaluate(root, n, configs, out=print):
    """Answers the first n test images under each config; per config its list of exact-match outcomes."""
    global W
    W, _ = M.read_safetensors(f"{root}/src/cli/main/resources/dev/calibquant/model/model.safetensors")
    s = S.generate(S.TEST_SEED, 0, n); images = S.render(s, np); nv = (C["image_size"] // C["patch_size"]) ** 2
    vis = [M.encode(W, C, images[i], dt) for i in range(n)]
    outcomes = {}
    for cfg in configs:
        qk, qv, cal = make(cfg); t0 = time.time(); bytype = {}
        for i in range(n):
            toks = S.prompt_tokens(s["question"][i], s["qlen"][i], nv); pl = len(toks); vs = len(S.PREFIX); ans = []
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
    evaluate(sys.argv[1], int(sys.argv[2]), sys.argv[3:], out=lambda line: print(line, flush=True))
