"""Kernel timing for the harness: the BENCHMARKS.md workload, CUDA graphs of many steps, medians of event-timed
replays, and the byte floors."""
import statistics

import numpy as np

from kernel_checks import quantize_launch, slot_ints
from kernel_reference import TAU_MAX, TAU_MIN, align16, clips


def bench(torch, steps, min_steps=20, replays=15):
    """Median microseconds per step over graph replays; steps: callables, one per rotation set."""
    for f in steps:
        f()
    torch.cuda.synchronize()
    n = max(min_steps, len(steps))
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.graph(graph, stream=stream):
        for i in range(n):
            steps[i % len(steps)]()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) * 1000.0 / n)
    del graph
    return statistics.median(times)


def copy_bandwidth(torch):
    """Device-to-device copy, bytes read + written, 2 GiB each way: the best of a copy kernel in a graph (a
    memcpy node of a graph runs on the slower copy engines) and plain copy_ calls timed with events."""
    n = 1 << 30
    src = torch.randn(n, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    us_kernel = bench(torch, [lambda: torch.add(src, 0, out=dst)], min_steps=5, replays=7)
    times = []
    for _ in range(7):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        dst.copy_(src)
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) * 1000.0)
    us = min(us_kernel, statistics.median(times))
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * 2 / (us * 1e-6) / 1e9


class Workload:
    """BENCHMARKS.md: 32 q heads, 8 KV heads, D 128, per sequence 41 prefix + 3328 visual (1 bit) + 64 text."""

    def __init__(self, torch, n_total=256, kvh=8, g=4, d=128, fp_len=105, vis=3328, bits=1):
        self.torch, self.n, self.kvh, self.g, self.d, self.fp_len, self.vis, self.bits = \
            torch, n_total, kvh, g, d, fp_len, vis, bits
        self.hq = kvh * g
        self.cap = align16(fp_len)
        rb = d * bits // 8
        dev = "cuda"
        gen = torch.Generator(device=dev).manual_seed(1234)
        self.kfp = torch.randn(n_total * kvh * self.cap * d, dtype=torch.float16, device=dev, generator=gen)
        self.vfp = torch.randn(n_total * kvh * self.cap * d, dtype=torch.float16, device=dev, generator=gen)
        self.kcode = torch.randint(0, 256, (n_total * kvh * vis * rb,), dtype=torch.uint8, device=dev, generator=gen)
        self.vcode = torch.randint(0, 256, (n_total * kvh * vis * rb,), dtype=torch.uint8, device=dev, generator=gen)
        sig = lambda: torch.rand(n_total * kvh * d, device=dev, generator=gen) + 0.5
        self.ksig, self.vsig = sig() * 3, sig()
        self.kalp, self.valp = -self.ksig * 2.5, -self.vsig * 2.5
        self.q = torch.randn(n_total * self.hq * d, dtype=torch.float16, device=dev, generator=gen)

    def tables(self, first, b, mode, chunk, fp_chunk, mm_chunk=None):
        """Tables for sequences first .. first+b-1 (outputs/counters indexed 0 .. b-1)."""
        seq_rows, span_rows, work, mm = [], [], [], []
        rb = self.d * self.bits // 8
        for i in range(b):
            s = first + i
            items = [[i, -1, t0, min(fp_chunk, self.fp_len - t0)] for t0 in range(0, self.fp_len, fp_chunk)]
            vc = self.vis if mode == 2 else chunk
            vis_items = [[i, i, t0, min(vc, self.vis - t0)] for t0 in range(0, self.vis, vc)]
            items += vis_items
            seq_rows.append([s * self.kvh * self.cap * self.d, self.fp_len, self.cap, s * self.hq * self.d,
                             len(work), len(items)])
            work += items
            mc = mm_chunk or chunk
            mparts = [] if mode == 3 else [[i, i, t0, min(mc, self.vis - t0)] for t0 in range(0, self.vis, mc)]
            span_rows.append([s * self.kvh * self.vis * rb, self.vis, s * self.kvh * self.d, len(mm),
                              len(vis_items) if mode == 3 else len(mparts)])
            mm += mparts
        t = lambda rows: self.torch.tensor(rows, dtype=self.torch.int64, device="cuda")
        return {"seq": t(seq_rows), "span": t(span_rows), "work": t(work), "mm": t(mm), "n_work": len(work),
                "n_mm": len(mm)}


def decode_sets(torch, wl, b, mode, chunk, fp_chunk, mm_chunk=None, max_sets=None):
    """Tables and per-step buffers for b sequences, one set per rotation over the workload's sequences (so that
    consecutive steps read different ones: from DRAM, as in a model's decode loop)."""
    sets = []
    n_sets = max(1, wl.n // b if max_sets is None else min(wl.n // b, max_sets))
    for r in range(n_sets):
        tabs = wl.tables(r * b, b, mode, chunk, fp_chunk, mm_chunk)
        if mode == 3:
            tabs["mm_buf"] = torch.zeros(slot_ints(b, wl.kvh), dtype=torch.int32, device="cuda")
        else:
            tabs["mm_buf"] = torch.empty(max(1, tabs["n_mm"]) * wl.hq * 2, dtype=torch.float32, device="cuda")
        tabs["part_ml"] = torch.empty(tabs["n_work"] * wl.hq * 2, dtype=torch.float32, device="cuda")
        tabs["part_acc"] = torch.empty(tabs["n_work"] * wl.hq * wl.d, dtype=torch.float32, device="cuda")
        tabs["counters"] = torch.zeros(b * wl.kvh, dtype=torch.int32, device="cuda")
        tabs["out"] = torch.empty(b * wl.hq * wl.d, dtype=torch.float32, device="cuda")
        sets.append(tabs)
    return sets


def time_decode(torch, dev, wl, b, variant, minmax_variant, mode, chunk, fp_chunk, mm_chunk=None):
    sets = decode_sets(torch, wl, b, mode, chunk, fp_chunk, mm_chunk)
    scale = 1.0 / np.sqrt(wl.d)

    def step(t):
        def f():
            if mode == 1:
                dev.launch(minmax_variant, (t["n_mm"], wl.kvh, 1),
                           [wl.q, wl.kcode, wl.ksig, wl.kalp, t["seq"], t["span"], t["mm"], t["mm_buf"], wl.kvh,
                            wl.g, scale])
            dev.launch(variant, (t["n_work"], wl.kvh, 1),
                       [wl.q, wl.kfp, wl.vfp, wl.kcode, wl.vcode, wl.ksig, wl.kalp, wl.vsig, wl.valp, t["seq"],
                        t["span"], t["work"], t["mm_buf"], t["part_ml"], t["part_acc"], t["counters"], t["out"],
                        wl.kvh, wl.g, scale, TAU_MIN, TAU_MAX, 0])
        return f

    us = bench(torch, [step(t) for t in sets])
    out = sets[0]["out"]
    bad = int((~torch.isfinite(out)).sum().item())
    if mode == 3 and any(int(t["mm_buf"].count_nonzero().item()) for t in sets):
        raise RuntimeError("mode 3 left its rendezvous slots non-zero")
    return us, bad


class Fp16Workload:
    """All 3433 tokens in full precision, layout [seq][KVH][3433][D]: also the SDPA tensors."""

    def __init__(self, torch, n_total=256, kvh=8, g=4, d=128, n_tok=3433):
        self.torch, self.n, self.kvh, self.g, self.d, self.n_tok = torch, n_total, kvh, g, d, n_tok
        self.hq = kvh * g
        gen = torch.Generator(device="cuda").manual_seed(99)
        self.k = torch.randn((n_total, kvh, n_tok, d), dtype=torch.float16, device="cuda", generator=gen)
        self.k[:, :, :, :4] *= 8
        self.v = torch.randn((n_total, kvh, n_tok, d), dtype=torch.float16, device="cuda", generator=gen)
        self.q = torch.randn((n_total, self.hq, 1, d), dtype=torch.float16, device="cuda", generator=gen)

    def tables(self, first, b, chunk):
        seq_rows, work = [], []
        for i in range(b):
            s = first + i
            items = [[i, -1, t0, min(chunk, self.n_tok - t0)] for t0 in range(0, self.n_tok, chunk)]
            seq_rows.append([s * self.kvh * self.n_tok * self.d, self.n_tok, self.n_tok, s * self.hq * self.d,
                             len(work), len(items)])
            work += items
        t = lambda rows: self.torch.tensor(rows, dtype=self.torch.int64, device="cuda")
        return {"seq": t(seq_rows), "work": t(work), "n_work": len(work)}


def time_fp16(torch, dev, wl, b, variant, chunk):
    sets = []
    for r in range(max(1, wl.n // b)):
        t = wl.tables(r * b, b, chunk)
        t["part_ml"] = torch.empty(t["n_work"] * wl.hq * 2, dtype=torch.float32, device="cuda")
        t["part_acc"] = torch.empty(t["n_work"] * wl.hq * wl.d, dtype=torch.float32, device="cuda")
        t["counters"] = torch.zeros(b * wl.kvh, dtype=torch.int32, device="cuda")
        t["out"] = torch.empty(b * wl.hq * wl.d, dtype=torch.float32, device="cuda")
        sets.append(t)
    scale = 1.0 / np.sqrt(wl.d)
    step = lambda t: (lambda: dev.launch(variant, (t["n_work"], wl.kvh, 1),
                                         [wl.q, wl.k, wl.v, t["seq"], t["work"], t["part_ml"], t["part_acc"],
                                          t["counters"], t["out"], wl.kvh, wl.g, scale]))
    us = bench(torch, [step(t) for t in sets])
    # spot check against SDPA on the first set
    ref = torch.nn.functional.scaled_dot_product_attention(wl.q[:b], wl.k[:b], wl.v[:b], enable_gqa=True).float()
    err = (sets[0]["out"].view(b, wl.hq, wl.d) - ref.view(b, wl.hq, wl.d)).abs().max().item()
    return us, err


def time_sdpa(torch, wl, b):
    F = torch.nn.functional
    sets = [(wl.q[r * b:(r + 1) * b], wl.k[r * b:(r + 1) * b], wl.v[r * b:(r + 1) * b]) for r in range(wl.n // b)]
    return bench(torch, [(lambda s=s: F.scaled_dot_product_attention(s[0], s[1], s[2], enable_gqa=True))
                         for s in sets])


def time_quantize(torch, dev, variant, n_spans, b, kvh=8, d=128, t=3328, bits=1, tpp=1):
    """b spans per launch of t tokens each; n_spans rotation pool. Returns (us, bytes moved at minimum)."""
    rb = d * bits // 8
    gen = torch.Generator(device="cuda").manual_seed(7)
    kin = torch.randn(n_spans * kvh * t * d, dtype=torch.float16, device="cuda", generator=gen)
    vin = torch.randn(n_spans * kvh * t * d, dtype=torch.float16, device="cuda", generator=gen)
    kc = torch.empty(n_spans * kvh * t * rb, dtype=torch.uint8, device="cuda")
    vc = torch.empty_like(kc)
    sc = [torch.empty(n_spans * kvh * d, dtype=torch.float32, device="cuda") for _ in range(4)]
    sets = []
    bufs = {"kin": kin, "vin": vin, "kcode": kc, "vcode": vc, "ksig": sc[0], "kalp": sc[1], "vsig": sc[2],
            "valp": sc[3]}
    ck, cv = clips(bits)
    scratch = None
    for r in range(n_spans // b):
        spans = [(s * kvh * t * d, t, 0, t, s * kvh * t * rb, s * kvh * d) for s in range(r * b, (r + 1) * b)]
        scratch, tabs = quantize_launch(dev, variant, spans, kvh, bufs, ck, cv, tpp=tpp, scratch=scratch)
        sets.append(tabs)
    torch.cuda.synchronize()

    def step(tabs):
        tab, qct = tabs
        programs = 2 * kvh * qct.numel()
        n_sync = 4 + 4 * b * 2 * kvh

        def launch():
            scratch.zero_()
            dev.launch(variant, (programs, 1, 1), [kin, vin, kc, vc, sc[0], sc[1], sc[2], sc[3], tab, qct,
                                                   scratch[n_sync:], scratch[:n_sync], ck, cv, kvh, tpp])
        return launch
    us = bench(torch, [step(s) for s in sets])
    moved = 2 * b * kvh * t * d * 2 + 2 * b * kvh * t * rb + 4 * b * kvh * d * 4
    del kin, vin
    torch.cuda.empty_cache()
    return us, moved


def floors(b, bw):
    fp16 = 2 * b * 8 * 3433 * 128 * 2 / (bw * 1e9) * 1e6
    onebit = (2 * b * 8 * 3328 * 16 + 2 * b * 8 * 105 * 128 * 2 + 4 * b * 8 * 128 * 2) / (bw * 1e9) * 1e6
    return fp16, onebit
