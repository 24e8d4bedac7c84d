"""One decode (or quantize) configuration of the BENCHMARKS.md workload, timed from Python, for Nsight Compute
without Java:

    ncu -k regex:calibquant_decode --launch-skip 2 --launch-count 1 --section WarpStateStats ... \\
        python3 tools/harness/profile_decode_kernel.py --variant calibquant_decode_b1_d128_mm3_hs4 --mode 3 --batch 256
    ncu -k regex:quantize_pack ... python3 tools/harness/profile_decode_kernel.py --variant quantize_pack_b1_d128 --batch 256

Loads the manifest's PTX exactly as check_kernels.py does (cuda_driver.py; kernel_timing.py: its workload, tables and launches) and prints the
median time per step; the first launches run outside a CUDA graph, so ncu's --launch-skip counts them.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_driver import CudaDriver, TorchDev  # noqa: E402
from kernel_reference import ROOT  # noqa: E402
from kernel_timing import Workload, time_decode, time_quantize  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ptx", default=str(ROOT / "ptx"), help="folder of a manifest.json (ptx/ or a candidate set)")
    p.add_argument("--target", default="sm_90a")
    p.add_argument("--variant", required=True)
    p.add_argument("--minmax", default=None, help="the min/max variant (mode 1)")
    p.add_argument("--mode", type=int, default=3, choices=(0, 1, 2, 3))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--chunk", type=int, default=512, help="visual item size in tokens")
    p.add_argument("--fp-chunk", type=int, default=64)
    p.add_argument("--tiles-per-program", type=int, default=2, help="quantize_pack: as the Java QuantizePlan sets it")
    a = p.parse_args()
    import torch
    root = Path(a.ptx)
    dev = TorchDev(CudaDriver(), json.loads((root / "manifest.json").read_text()), root, a.target)
    if a.variant.startswith("quantize_pack"):
        # batch spans of 3328 tokens (8 KV heads, D 128) per launch, as at the end of the workload's prefills
        us, moved = time_quantize(torch, dev, a.variant, a.batch, a.batch, tpp=a.tiles_per_program)
        print(f"{a.variant} B {a.batch}: {us:.1f} us per launch, {moved / us / 1e3:.0f} GB/s of least bytes moved")
        return
    wl = Workload(torch)
    us, nonfinite = time_decode(torch, dev, wl, a.batch, a.variant, a.minmax, a.mode, a.chunk, a.fp_chunk)
    print(f"{a.variant} mode {a.mode} B {a.batch} chunk {a.chunk}: {us:.1f} us per step, {nonfinite} non-finite")


if __name__ == "__main__":
    main()
