#!/usr/bin/env python3
"""Check the compiled PTX kernels against plain references of the spec, then time them (runs on the GPU host).

    python3 tools/harness/check_kernels.py --out results.json                 # checks on both targets, then timing
    python3 tools/build/compile_ptx.py --set candidates --out /tmp/x --targets sm_90a
    python3 tools/harness/check_kernels.py --parts select --exp /tmp/x --out sel.json   # rewrites ptx/selection.json

The kernels are loaded exactly as the Java side loads them: the PTX text from ptx/<target>/ through the CUDA
driver (cuModuleLoadDataEx, so sm_80 PTX runs through the driver's JIT on a newer GPU) and launched with
cuLaunchKernel from the manifest's argument list plus the two trailing scratch pointers. Every check uses fresh
seeded random inputs (the seed is printed with every failure), outputs pre-filled with NaN and pools whose
unused rows hold NaN (fp16/fp32) so that a read or a write outside the valid rows shows. References are
computed in float64 (attention) or in the spec's exact float32 formulas (quantization).

The harness is split by role; this script is its entry point:
  kernel_reference.py   the spec's arithmetic in NumPy (quantizer, packing, random inputs)
  decode_batch.py       pools and tables as ptx/README.md describes them, and the float64 reference attention
  kernel_checks.py      the checks and the tolerances derived from the arithmetic
  cuda_driver.py        the CUDA driver through ctypes, and torch for memory, events and graphs
  kernel_timing.py      the timed workload, graphs of many steps, byte floors
  tuning_candidates.py  traced timelines, candidate sets and the selection
"""
import argparse
import datetime
import hashlib
import json
import time
from pathlib import Path

from cuda_driver import CudaDriver, TorchDev
from kernel_checks import Report, run_checks
from kernel_reference import ROOT
from kernel_timing import (Fp16Workload, Workload, copy_bandwidth, floors, time_decode, time_fp16, time_quantize,
                           time_sdpa)
from tuning_candidates import (run_gluon, run_now_candidate, run_onelaunch, run_quantize_candidates, run_selection,
                               run_trace)


def verify_manifest(manifest, root):
    problems = []
    for k in manifest["kernels"]:
        src = root / k["source"]
        if hashlib.sha256(src.read_bytes()).hexdigest() != k["source_sha256"]:
            problems.append(f"{k['name']}: {k['source']} changed since it was compiled")
        for t, info in k["targets"].items():
            if hashlib.sha256((root / info["ptx"]).read_bytes()).hexdigest() != info["ptx_sha256"]:
                problems.append(f"{k['name']} [{t}]: {info['ptx']} does not match its hash")
    return problems


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ptx", default=str(ROOT / "ptx"))
    p.add_argument("--exp", default=None, help="directory of a candidates manifest (compile_ptx.py --set candidates)")
    p.add_argument("--selection", default=str(ROOT / "ptx" / "selection.json"), help="written by the select part")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    p.add_argument("--budget", type=float, default=240.0, help="seconds; optional parts are skipped past it")
    p.add_argument("--parts", default="checks,timing",
                   help="any of checks,timing,select,gluon,quantize,onelaunch,trace")
    p.add_argument("--targets", default="sm_90a,sm_80", help="targets whose PTX is checked")
    p.add_argument("--batches", default="1,8,32,64,128,256", help="batch sizes of the decode timing table")
    a = p.parse_args()
    t_start = time.time()
    left = lambda: a.budget - (time.time() - t_start)
    parts = set(a.parts.split(","))
    import torch
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "seed": a.seed}
    try:
        import triton
        results["triton"] = triton.__version__
    except ImportError:
        pass
    out_path = Path(a.out)

    def candidates():
        """The candidate set of --exp on sm_90a, its kernel facts recorded in the results."""
        exp_root = Path(a.exp)
        exp_manifest = json.loads((exp_root / "manifest.json").read_text())
        xdev = TorchDev(driver, exp_manifest, exp_root, "sm_90a")
        results["candidate_kernel_info"] = xdev.info
        return xdev, exp_manifest

    def save():
        out_path.write_text(json.dumps(results, indent=1, sort_keys=True, default=float) + "\n")

    root = Path(a.ptx)
    manifest = None
    if parts & {"checks", "timing"}:
        manifest = json.loads((root / "manifest.json").read_text())
        results["manifest_problems"] = verify_manifest(manifest, root)
        for pr in results["manifest_problems"]:
            print("MANIFEST", pr)
    torch.zeros(1, device="cuda")  # the primary context is current from here on
    driver = CudaDriver()
    report = Report()
    results["checks"] = report.rows
    print(f"seed {a.seed}; device {results['device']}", flush=True)
    if "checks" in parts:
        for target in a.targets.split(","):
            dev = TorchDev(driver, manifest, root, target)
            results.setdefault("kernel_info", {})[target] = dev.info
            try:
                run_checks(dev, target, report, a.seed, quick=(target == "sm_80"))
            except Exception as e:  # a CUDA error is sticky: report it and stop checking
                report.add("(checks)", target, "exception", False, f"{type(e).__name__}: {e}")
                break
            save()
    save()
    if "timing" in parts:
        results["timing"] = {}
        run_timing(torch, TorchDev(driver, manifest, root, "sm_90a"), left, save, results["timing"],
                   [int(b) for b in a.batches.split(",")])
        save()
    if a.exp and "gluon" in parts:
        xdev, exp_manifest = candidates()
        results["gluon"] = run_gluon(torch, xdev, report, a.seed + 2000, left, exp_manifest, save)
    if a.exp and "onelaunch" in parts:
        xdev, exp_manifest = candidates()
        results["onelaunch"] = run_onelaunch(torch, xdev, report, a.seed + 4000, left, exp_manifest, save)
    if a.exp and "trace" in parts:
        xdev, _ = candidates()
        results["trace"] = run_trace(torch, xdev, TorchDev(driver, json.loads((root / "manifest.json").read_text()),
                                                           root, "sm_90a"), [int(b) for b in a.batches.split(",")],
                                     save)
        results["now"] = run_now_candidate(torch, xdev, TorchDev(driver, json.loads(
            (root / "manifest.json").read_text()), root, "sm_90a"), report, a.seed + 5000,
            [int(b) for b in a.batches.split(",")], save)
    if a.exp and "quantize" in parts:
        xdev, exp_manifest = candidates()
        results["quantize"] = run_quantize_candidates(torch, xdev, report, a.seed + 3000, left, exp_manifest, save)
    if a.exp and "select" in parts:
        xdev, exp_manifest = candidates()
        bw = copy_bandwidth(torch)
        results["selection"] = run_selection(torch, xdev, report, a.seed + 1000, left, bw, exp_manifest,
                                             a.selection)
    save()
    n_fail = sum(not r["ok"] for r in report.rows)
    print(f"\n{len(report.rows)} checks, {n_fail} failed; total {time.time() - t_start:.0f} s; results in {out_path}")


def guarded(label, fn, *args):
    try:
        return fn(*args)
    except Exception as e:
        print(f"TIMING {label} failed: {type(e).__name__}: {e}", flush=True)
        return None


def run_timing(torch, dev, left, save, timing, batches):
    bw = copy_bandwidth(torch)
    timing["copy_GBps"] = bw
    print(f"copy bandwidth {bw:.0f} GB/s", flush=True)
    names = set(dev.names())
    table = []
    qv = "quantize_pack_b1_d128"
    # tiles per program as the Java QuantizePlan sets them for these spans: at least MIN_CHUNK_TOKENS (128) tokens
    tpp = max(1, -(-128 // dev.constexprs(qv)["BT"])) if qv in names else 1
    for b in (1, 8, 64):
        r = guarded(f"{qv} B {b}", time_quantize, torch, dev, qv, 64, b, 8, 128, 3328, 1, tpp) if qv in names else None
        if r:
            us, moved = r
            table.append({"kernel": qv, "B": b, "us": us, "GBps": moved / us / 1e3, "of_copy": moved / us / 1e3 / bw})
            print(f"quantize_pack 1 bit D 128, B {b} spans of 3328, {tpp} tiles per program: {us:.1f} us, "
                  f"{moved / us / 1e3:.0f} GB/s "
                  f"({100 * moved / us / 1e3 / bw:.0f}% of copy)", flush=True)
    timing["quantize"] = table
    wl = Workload(torch)
    fwl = Fp16Workload(torch)
    rows = []
    timing["decode"] = rows
    for b in batches:
        if left() < 25:
            print("time budget reached; decode timing stops at B", b)
            break
        f16, f1 = floors(b, bw)
        row = {"B": b, "floor_fp16_us": f16, "floor_1bit_us": f1}
        for chunk in (128, 256, 832):
            r = guarded(f"mm1 c{chunk} B {b}", time_decode, torch, dev, wl, b, "calibquant_decode_b1_d128_mm1",
                        "calibquant_minmax_b1_d128", 1, chunk, 128)
            if r:
                row[f"calibquant_mm1_c{chunk}_us"], row[f"calibquant_mm1_c{chunk}_nonfinite"] = r
        for v in ("calibquant_decode_b1_d128_mm3", "calibquant_decode_b1_d128_mm3_hs4"):
            for chunk in (64, 128, 256, 512):
                if v in names and (b <= 8 or chunk >= 256):
                    r = guarded(f"{v} c{chunk} B {b}", time_decode, torch, dev, wl, b, v, None, 3, chunk, 64)
                    if r:
                        tag = "calibquant_" + v.split("_d128_")[1]
                        row[f"{tag}_c{chunk}_us"], row[f"{tag}_c{chunk}_nonfinite"] = r
        for v in ("calibquant_decode_b1_d128_mm1_hs4",):
            for chunk in (128, 832):
                if v in names and (b <= 8 or chunk >= 256):
                    r = guarded(f"{v} c{chunk} B {b}", time_decode, torch, dev, wl, b, v, "calibquant_minmax_b1_d128_hs4",
                                1, chunk, 64)
                    if r:
                        tag = "calibquant_" + v.split("_d128_")[1]
                        row[f"{tag}_c{chunk}_us"], row[f"{tag}_c{chunk}_nonfinite"] = r
        r = guarded(f"mm2 B {b}", time_decode, torch, dev, wl, b, "calibquant_decode_b1_d128_mm2", None, 2, 3328,
                    128)
        if r:
            row["calibquant_mm2_us"], row["calibquant_mm2_nonfinite"] = r
        for chunk in (256, 1024, 3433):
            r = guarded(f"fp16 c{chunk} B {b}", time_fp16, torch, dev, fwl, b, "fp16_decode_d128", chunk)
            if r:
                row[f"fp16_c{chunk}_us"], row[f"fp16_c{chunk}_maxerr_vs_sdpa"] = r
        row["sdpa_us"] = guarded(f"sdpa B {b}", time_sdpa, torch, fwl, b)
        cq = [v for k, v in row.items() if k.startswith("calibquant") and k.endswith("_us")]
        f16s = [v for k, v in row.items() if k.startswith("fp16_c") and k.endswith("_us")]
        if cq:
            row["calibquant_best_us"] = min(cq)
            row["best_over_1bit_floor"] = min(cq) / f1
        rows.append(row)
        fmt = lambda x: f"{x:8.1f}" if x else "     n/a"
        print(f"B {b:3d}: calibquant best {fmt(min(cq) if cq else None)} us (1-bit floor {f1:6.1f}) | fp16_decode "
              f"{fmt(min(f16s) if f16s else None)} | SDPA {fmt(row['sdpa_us'])} | fp16 floor {f16:6.1f}", flush=True)
        save()
    del wl, fwl
    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
