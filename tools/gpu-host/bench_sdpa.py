"""PyTorch SDPA on the BENCHMARKS.md decode workload, for `calibquant bench --sdpa` in the same device run.

One decode step of one layer: q [B, 32, 1, 128], K and V [B, 8, 3433, 128] fp16 (random normal), native GQA.
Median over repetitions of the CUDA-event time of back-to-back steps. Writes {"sdpa_us": {B: µs}} as JSON.
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8,32,64,128,256")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(20261128)
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "sdpa_us": {}}
    for b in [int(x) for x in args.batches.split(",")]:
        q = torch.randn(b, 32, 1, 128, device="cuda", dtype=torch.float16)
        k = torch.randn(b, 8, 3433, 128, device="cuda", dtype=torch.float16)
        v = torch.randn(b, 8, 3433, 128, device="cuda", dtype=torch.float16)
        for _ in range(10):
            F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        times = []
        for _ in range(args.reps):
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(args.steps):
                F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1) * 1e3 / args.steps)
        result["sdpa_us"][str(b)] = statistics.median(times)
        print(f"SDPA B={b}: {result['sdpa_us'][str(b)]:.1f} us", flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
