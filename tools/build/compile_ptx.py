#!/usr/bin/env python3
"""Compile the Triton kernels in ptx/kernels/ ahead of time to PTX and write the manifest the Java side loads.

Runs where Triton is installed (the GPU host; no GPU is needed for compiling):
    python3 tools/build/compile_ptx.py                      # production variants -> ptx/<target>/*.ptx, ptx/manifest.json
    python3 tools/build/compile_ptx.py --set candidates --out /tmp/x --targets sm_90a     # tuning candidates

Each variant is one kernel function with fixed constexprs, warps and pipeline stages; the tile shapes come from
ptx/selection.json, which check_kernels.py --select writes from measured candidates. Pointer arguments are
declared 16-byte aligned (tt.divisibility 16); no integer argument is specialized: every .entry must have exactly
the manifest's arguments plus Triton's two trailing scratch pointers, or the script fails. Output is
deterministic: re-running with the same Triton gives identical files.
"""
import os

os.environ.setdefault("TRITON_DISABLE_LINE_INFO", "1")  # no absolute source paths inside the PTX

import argparse
import concurrent.futures
import hashlib
import importlib.util
import json
import multiprocessing
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNEL_DIR = ROOT / "ptx" / "kernels"
TARGETS = {"sm_90a": 90, "sm_80": 80}  # GPUTarget("cuda", 90, 32) emits .target sm_90a
# a target's cubin runs only on that exact compute capability (9.0 / 8.0): "cubin_compute" in the manifest


def variant(name, file, function, constexprs, num_warps, num_stages, maxnreg=None):
    v = {"name": name, "file": file, "function": function, "constexprs": dict(constexprs),
         "num_warps": num_warps, "num_stages": num_stages}
    if maxnreg:
        v["maxnreg"] = maxnreg  # a register cap: more one-warp programs resident per SM
    return v


sys.path.insert(0, str(ROOT / "ptx" / "kernels"))
import interface  # noqa: E402  (ptx/kernels/interface.py: the tables and scratch layouts, the one definition)

SELECTION = ROOT / "ptx" / "selection.json"  # the tile shapes that ship, chosen from measured candidates


def load_selection(path=SELECTION):
    return json.loads(Path(path).read_text())


def production_variants(selection=None):
    sel = selection or load_selection()
    att, f16, qz = sel["attention"], sel["fp16_decode"], sel["quantize_pack"]
    out = []
    for d in (64, 128):
        for bits in (1, 2, 4, 8):
            out.append(variant(f"quantize_pack_b{bits}_d{d}", "quantize.py", "quantize_pack",
                               {"D": d, "BITS": bits, "BT": qz["BT"]},
                               qz["num_warps"], qz["num_stages"], qz.get("maxnreg")))
        glu = sel["gluon"]
        for hs in (8, 4):  # 1 bit: the Gluon kernels; HS=4 (suffix _hs4) for groups of up to 4 query heads
            suffix = "" if hs == 8 else f"_hs{hs}"
            cx = {"D": d, "BITS": 1, "BN": glu["BN"], "HS": hs}
            reg = glu.get("maxnreg", {}).get(f"hs{hs}")
            out.append(variant(f"calibquant_minmax_b1_d{d}{suffix}", "attention_gluon.py", "calibquant_minmax", cx,
                               1, 1, reg))
            for mm in (0, 1, 2, 3):  # mode 3: the one-launch rendezvous, Gluon only
                out.append(variant(f"calibquant_decode_b1_d{d}_mm{mm}{suffix}", "attention_gluon.py",
                                   "calibquant_decode", {**cx, "MM_MODE": mm, "CH": glu["CH"]}, 1, 1, reg))
        for bits in (2, 4):
            impl = att["IMPL"]
            if impl == 1 and d * bits // 8 < 16:
                impl = 2  # bit-plane dots need a K of at least 16 bytes per token row
            cx = {"D": d, "BITS": bits, "BN": att["BN"], "HS": 8, "UNPACK": att["UNPACK"], "IMPL": impl}
            out.append(variant(f"calibquant_minmax_b{bits}_d{d}", "attention.py", "calibquant_minmax", cx,
                               att["num_warps"], att["num_stages"]))
            for mm in (0, 1, 2):
                out.append(variant(f"calibquant_decode_b{bits}_d{d}_mm{mm}", "attention.py", "calibquant_decode",
                                   {**cx, "MM_MODE": mm}, att["num_warps"], att["num_stages"]))
        out.append(variant(f"fp16_decode_d{d}", "attention.py", "fp16_decode", {"D": d, "BN": f16["BN"], "HS": 8},
                           f16["num_warps"], f16["num_stages"]))
        out.append(variant(f"append_token_d{d}", "append.py", "append_token", {"D": d}, 1, 1))
    return out


def candidate_variants():
    """Tuning candidates (D=128, 1 bit), checked and timed by check_kernels.py --select. Each carries the
    selection group and the configuration it would ship as."""
    out = []

    def cand(group, name, file, function, cx, config):
        v = variant(name, file, function, cx, config["num_warps"], config["num_stages"])
        v["group"], v["config"] = group, config
        out.append(v)

    for impl, bn, nw, ns in ((2, 64, 4, 2), (1, 64, 4, 2), (1, 128, 4, 2), (1, 128, 8, 2), (1, 64, 4, 1),
                             (1, 64, 4, 3), (2, 128, 8, 2)):
        tag = f"i{impl}_bn{bn}_w{nw}_s{ns}"
        config = {"IMPL": impl, "BN": bn, "UNPACK": 0, "num_warps": nw, "num_stages": ns}
        cx = {"D": 128, "BITS": 1, "BN": bn, "HS": 8, "UNPACK": 0, "IMPL": impl}
        cand("attention", f"x_calibquant_minmax_{tag}", "attention.py", "calibquant_minmax", cx, config)
        for mm in (1, 2):
            cand("attention", f"x_calibquant_decode_mm{mm}_{tag}", "attention.py", "calibquant_decode",
                 {**cx, "MM_MODE": mm}, config)
    for bn, nw in ((64, 4), (128, 4), (128, 8)):
        cand("fp16_decode", f"x_fp16_decode_bn{bn}_w{nw}", "attention.py", "fp16_decode",
             {"D": 128, "BN": bn, "HS": 8}, {"BN": bn, "num_warps": nw, "num_stages": 2})
    out += quantize_candidates()
    return out


def onelaunch_candidates():
    """The one-launch calibrated 1-bit decode (mode 3) at several tile sizes, item limits (CH) and register caps,
    D 128, 4 head slots (check_kernels.py --parts onelaunch)."""
    out = []
    for bn, ch, reg in ((32, 512, 128), (32, 512, 112), (32, 512, 96), (32, 512, None), (32, 1024, 128),
                        (64, 512, 128), (64, 512, 168)):
        tag = f"bn{bn}_ch{ch}_r{reg or 0}"
        v = variant(f"x_calibquant_decode_mm3_{tag}", "attention_gluon.py", "calibquant_decode",
                    {"D": 128, "BITS": 1, "BN": bn, "HS": 4, "MM_MODE": 3, "CH": ch}, 1, 1, reg)
        v["group"], v["config"] = "onelaunch", {"BN": bn, "CH": ch, "maxnreg": reg or 0}
        out.append(v)
    return out


def trace_variants(selection=None):
    """The shipping mode-3 decode (D 128, 4 and 8 head slots) with a timeline written per program
    (calibquant_decode_traced; check_kernels.py --parts trace). Harness only: never in ptx/."""
    glu = (selection or load_selection())["gluon"]
    out = []
    for hs in (4, 8):
        v = variant(f"x_calibquant_decode_traced_hs{hs}", "attention_gluon.py", "calibquant_decode_traced",
                    {"D": 128, "BITS": 1, "BN": glu["BN"], "HS": hs, "MM_MODE": 3, "CH": glu["CH"]}, 1, 1,
                    glu.get("maxnreg", {}).get(f"hs{hs}"))
        v["group"], v["config"] = "trace", {"HS": hs}
        out.append(v)
        # the production kernel from the source as it is now: compared with the shipped PTX by --parts trace
        c = variant(f"x_calibquant_decode_mm3_now_hs{hs}", "attention_gluon.py", "calibquant_decode",
                    {"D": 128, "BITS": 1, "BN": glu["BN"], "HS": hs, "MM_MODE": 3, "CH": glu["CH"]}, 1, 1,
                    glu.get("maxnreg", {}).get(f"hs{hs}"))
        c["group"], c["config"] = "trace-now", {"HS": hs}
        out.append(c)
    return out


def quantize_candidates():
    """quantize_pack chunk sizes (tokens per program), warps and register caps, 1 bit, D 128
    (check_kernels.py --parts quantize)."""
    out = []
    for bt, nw, reg in ((64, 2, None), (64, 2, 128), (64, 2, 112), (64, 4, None), (128, 4, None), (256, 4, None)):
        v = variant(f"x_quantize_pack_bt{bt}_w{nw}_r{reg or 0}", "quantize.py", "quantize_pack",
                    {"D": 128, "BITS": 1, "BT": bt}, nw, 1, reg)
        v["group"], v["config"] = "quantize_pack", {"BT": bt, "num_warps": nw, "num_stages": 1, "maxnreg": reg or 0}
        out.append(v)
    return out


def gluon_candidates():
    """The Gluon 1-bit decode kernels (attention_gluon.py) at several tile sizes and slot counts, plus the
    shipping Triton configuration they are measured against (group "attention")."""
    out = []
    for d, bn, hs, reg in ((128, 32, 4, None), (128, 32, 4, 128), (128, 32, 4, 96), (128, 16, 4, 96),
                           (128, 32, 8, 168), (128, 32, 8, 128)):
        tag = f"g_d{d}_bn{bn}_hs{hs}_r{reg or 0}"
        config = {"IMPL": "gluon", "BN": bn, "HS": hs, "D": d, "num_warps": 1, "num_stages": 1, "maxnreg": reg or 0}
        cx = {"D": d, "BITS": 1, "BN": bn, "HS": hs}
        for name, fn, extra in [(f"x_calibquant_minmax_{tag}", "calibquant_minmax", {})] + [
                (f"x_calibquant_decode_mm{m}_{tag}", "calibquant_decode", {"MM_MODE": m}) for m in (0, 1, 2)]:
            v = variant(name, "attention_gluon.py", fn, {**cx, **extra}, 1, 1, reg)
            v["group"], v["config"] = "gluon", config
            out.append(v)
    sel = load_selection()["attention"]
    tag = f"i{sel['IMPL']}_bn{sel['BN']}_w{sel['num_warps']}_s{sel['num_stages']}"
    cx = {"D": 128, "BITS": 1, "BN": sel["BN"], "HS": 8, "UNPACK": sel["UNPACK"], "IMPL": sel["IMPL"]}
    for name, fn, extra in [(f"x_calibquant_minmax_{tag}", "calibquant_minmax", {})] + [
            (f"x_calibquant_decode_mm{m}_{tag}", "calibquant_decode", {"MM_MODE": m}) for m in (0, 1, 2)]:
        v = variant(name, "attention.py", fn, {**cx, **extra}, sel["num_warps"], sel["num_stages"])
        v["group"], v["config"] = "attention", dict(sel)
        out.append(v)
    return out


_MODULES = {}


def load_kernel_module(file):
    if file not in _MODULES:
        path = KERNEL_DIR / file
        spec = importlib.util.spec_from_file_location("calibquant_kernels_" + path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # Triton's JIT resolves the function's globals through its module
        spec.loader.exec_module(mod)
        _MODULES[file] = mod
    return _MODULES[file]


def kernel_args(file, function):
    """The non-constexpr arguments, in order, as declared next to the kernel: [(name, type), ...]."""
    return list(getattr(load_kernel_module(file), function.upper() + "_ARGS"))


def compile_one(job):
    """Worker: compiles one (variant, target); returns a plain dict (or the error text)."""
    v, target = job
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        fn = getattr(load_kernel_module(v["file"]), v["function"])
        args = kernel_args(v["file"], v["function"])
        names = list(fn.arg_names)
        runtime = [n for n, _ in args]
        if names[:len(runtime)] != runtime or sorted(names[len(runtime):]) != sorted(v["constexprs"]):
            raise ValueError(f"kernel arguments {names} != declared runtime args {runtime} + constexprs "
                             f"{sorted(v['constexprs'])}")
        signature = {n: t for n, t in args}
        signature.update({n: "constexpr" for n in names[len(runtime):]})
        attrs = {(i,): [["tt.divisibility", 16]] for i, (_, t) in enumerate(args) if t.startswith("*")}
        constexprs = {n: v["constexprs"][n] for n in names[len(runtime):]}
        if getattr(fn, "is_gluon", lambda: False)():
            from triton.experimental.gluon._runtime import GluonASTSource
            src = GluonASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        else:
            src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", TARGETS[target], 32),
                                  options={"num_warps": v["num_warps"], "num_stages": v["num_stages"],
                                           **({"maxnreg": v["maxnreg"]} if v.get("maxnreg") else {})})
        md = compiled.metadata
        return {"ok": True, "ptx": compiled.asm["ptx"], "cubin": compiled.asm["cubin"], "name": md.name,
                "shared": int(md.shared),
                "num_warps": int(md.num_warps), "num_stages": int(md.num_stages),
                "global_scratch_size": int(getattr(md, "global_scratch_size", 0) or 0),
                "global_scratch_align": int(getattr(md, "global_scratch_align", 1) or 1),
                "profile_scratch_size": int(getattr(md, "profile_scratch_size", 0) or 0),
                "triton_version": triton.__version__}
    except Exception as e:  # reported per variant; the caller decides
        import traceback
        return {"ok": False, "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"}


ENTRY_RE = re.compile(r"\.visible\s+\.entry\s+(\w+)\s*\(([^)]*)\)", re.S)
PARAM_RE = re.compile(r"\.param\s+\.(\w+)")
WIDTH = {"u64": 64, "b64": 64, "s64": 64, "u32": 32, "b32": 32, "s32": 32, "f32": 32}
ARG_WIDTH = {"i32": 32, "fp32": 32, "i64": 64}


def inspect_ptx(ptx, args):
    """Entry name and PTX version; fails unless the .entry parameters are exactly args + 2 scratch pointers."""
    entries = ENTRY_RE.findall(ptx)
    if len(entries) != 1:
        raise ValueError(f"expected one .entry, found {len(entries)}")
    entry, params = entries[0]
    types = PARAM_RE.findall(params)
    if len(types) != len(args) + 2:
        raise ValueError(f".entry {entry} has {len(types)} parameters, expected {len(args)} + 2 scratch pointers: "
                         f"an argument was specialized away or added")
    for (name, t), pt in zip(args + [("global_scratch", "*"), ("profile_scratch", "*")], types):
        want = 64 if t.startswith("*") else ARG_WIDTH[t]
        if WIDTH.get(pt) != want:
            raise ValueError(f".entry {entry}: parameter {name} ({t}) is .{pt}, expected {want} bits")
    version = re.search(r"^\s*\.version\s+(\S+)", ptx, re.M).group(1)
    ptx_target = re.search(r"^\s*\.target\s+(\S+)", ptx, re.M).group(1).rstrip(",")
    return entry, version, ptx_target


def relative_file_paths(ptx):
    """Debug-file directives, if any survived, name the source relative to the repository."""
    return re.sub(r'(\.file\s+\d+\s+")([^"]*/)?(ptx/kernels/[^"]*")', r"\1\3", ptx)


def sha256_bytes(b):
    return hashlib.sha256(b).hexdigest()


def build(variants, targets, out_dir, workers):
    out_dir = Path(out_dir)
    jobs = [(v, t) for v in variants for t in targets]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        results = list(pool.map(compile_one, jobs))
    failures = []
    kernels = {}
    triton_version = None
    for (v, t), r in zip(jobs, results):
        if not r["ok"]:
            failures.append(f"{v['name']} [{t}]: {r['error']}")
            continue
        try:
            args = kernel_args(v["file"], v["function"])
            ptx = relative_file_paths(r["ptx"])
            entry, version, ptx_target = inspect_ptx(ptx, args)
            if entry != r["name"]:
                raise ValueError(f"PTX entry {entry} != Triton's kernel name {r['name']}")
        except Exception as e:
            failures.append(f"{v['name']} [{t}]: {e}")
            continue
        triton_version = r["triton_version"]
        rel = f"{t}/{v['name']}.ptx"
        (out_dir / t).mkdir(parents=True, exist_ok=True)
        data = ptx.encode()
        (out_dir / rel).write_bytes(data)
        # the same PTX assembled by Triton's ptxas for exactly this architecture: the driver loads it without
        # JIT-compiling (cold load in milliseconds instead of ~0.4 s a variant); other GPUs JIT the PTX
        cubin_rel = f"{t}/{v['name']}.cubin"
        (out_dir / cubin_rel).write_bytes(r["cubin"])
        source = KERNEL_DIR / v["file"]
        k = kernels.setdefault(v["name"], {
            "name": v["name"], "source": f"kernels/{v['file']}", "function": v["function"],
            "source_sha256": sha256_bytes(source.read_bytes()), "constexprs": v["constexprs"],
            "args": [{"name": n, "type": ty} for n, ty in args], "targets": {}})
        if "group" in v:
            k["group"], k["config"] = v["group"], v["config"]
        k["targets"][t] = {"ptx": rel, "entry": entry, "ptx_target": ptx_target, "ptx_version": version,
                           "num_warps": r["num_warps"], "num_stages": r["num_stages"], "shared": r["shared"],
                           "global_scratch_size": r["global_scratch_size"],
                           "global_scratch_align": r["global_scratch_align"],
                           "profile_scratch_size": r["profile_scratch_size"], "ptx_sha256": sha256_bytes(data),
                           "cubin": cubin_rel, "cubin_sha256": sha256_bytes(r["cubin"]),
                           "cubin_compute": TARGETS[t]}
    manifest = {"triton_version": triton_version, "kernels": [kernels[n] for n in sorted(kernels)],
                "interface": interface.schema()}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest, failures


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=["production", "candidates", "gluon", "quantize", "onelaunch", "trace"],
                   default="production")
    p.add_argument("--selection", default=str(SELECTION))
    p.add_argument("--out", default=str(ROOT / "ptx"))
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--interface-only", action="store_true",
                   help="only write ptx/kernels/interface.py's schema into OUT/manifest.json (no Triton, no compile)")
    a = p.parse_args()
    problems = interface.check_kernel_sources()
    if problems:
        sys.exit("the kernel sources disagree with ptx/kernels/interface.py:\n  " + "\n  ".join(problems))
    if a.interface_only:
        path = Path(a.out) / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["interface"] = interface.schema()
        path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        print(f"wrote the interface into {path}")
        return
    if a.set == "production":
        variants = production_variants(load_selection(a.selection))
    elif a.set == "gluon":
        variants = gluon_candidates()
    elif a.set == "quantize":
        variants = quantize_candidates()
    elif a.set == "onelaunch":
        variants = onelaunch_candidates()
    elif a.set == "trace":
        variants = trace_variants(load_selection(a.selection))
    else:
        variants = candidate_variants()
    targets = [t for t in a.targets.split(",") if t]
    for t in targets:
        if t not in TARGETS:
            sys.exit(f"unknown target {t}; known: {', '.join(TARGETS)}")
    manifest, failures = build(variants, targets, a.out, a.workers)
    n_ok = sum(len(k["targets"]) for k in manifest["kernels"])
    print(f"compiled {n_ok} of {len(variants) * len(targets)} (variant, target) pairs with Triton "
          f"{manifest['triton_version']} into {a.out}")
    for f in failures:
        print("FAILED", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
