"""The GPU for the kernel harness: the CUDA driver through ctypes (modules and launches exactly as the Java side does
them) and torch for memory, events and graphs."""
import ctypes
from pathlib import Path

import numpy as np


class CudaDriver:
    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        L, vp, u = self.lib, ctypes.c_void_p, ctypes.c_uint
        L.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        L.cuModuleLoadDataEx.argtypes = [ctypes.POINTER(vp), ctypes.c_char_p, u, vp, vp]
        L.cuModuleGetFunction.argtypes = [ctypes.POINTER(vp), vp, ctypes.c_char_p]
        L.cuFuncSetAttribute.argtypes = [vp, ctypes.c_int, ctypes.c_int]
        L.cuLaunchKernel.argtypes = [vp, u, u, u, u, u, u, u, vp, vp, vp]
        L.cuFuncGetAttribute.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int, vp]
        self.check(L.cuInit(0), "cuInit")

    def check(self, res, what, log=None):
        if res != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(res, ctypes.byref(name))
            raise RuntimeError(f"{what} failed: {name.value.decode() if name.value else res}"
                               + (f"\n{log}" if log else ""))

    def load(self, ptx_text, entry, shared):
        mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
        log = ctypes.create_string_buffer(1 << 16)
        opts = (ctypes.c_int * 2)(5, 6)  # CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES
        vals = (ctypes.c_void_p * 2)(ctypes.cast(log, ctypes.c_void_p), ctypes.c_void_p(1 << 16))
        res = self.lib.cuModuleLoadDataEx(ctypes.byref(mod), ptx_text.encode() + b"\0", 2,
                                          ctypes.cast(opts, ctypes.c_void_p), ctypes.cast(vals, ctypes.c_void_p))
        self.check(res, f"cuModuleLoadDataEx({entry})", log.value.decode(errors="replace"))
        self.check(self.lib.cuModuleGetFunction(ctypes.byref(fn), mod, entry.encode()), f"cuModuleGetFunction({entry})")
        if shared > 48 * 1024:
            self.check(self.lib.cuFuncSetAttribute(fn, 8, shared), "cuFuncSetAttribute(MAX_DYNAMIC_SHARED)")
        return fn

    def attribute(self, fn, attr):
        v = ctypes.c_int()
        self.check(self.lib.cuFuncGetAttribute(ctypes.byref(v), attr, fn), "cuFuncGetAttribute")
        return v.value

    def launch(self, fn, grid, block, shared, stream, values):
        params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        self.check(self.lib.cuLaunchKernel(fn, grid[0], grid[1], grid[2], block, 1, 1, shared,
                                           ctypes.c_void_p(stream), ctypes.addressof(params), None),
                   "cuLaunchKernel")


class TorchDev:
    """Device buffers are torch tensors; kernels are the manifest's PTX for one target."""

    def __init__(self, driver, manifest, ptx_root, target):
        import torch
        self.torch, self.driver, self.target, self.root = torch, driver, target, Path(ptx_root)
        self.kernels = {k["name"]: k for k in manifest["kernels"] if target in k["targets"]}
        self.loaded = {}
        self.info = {}
        self.scratch = torch.zeros(16, dtype=torch.uint8, device="cuda")

    def names(self):
        return list(self.kernels)

    def constexprs(self, name):
        return self.kernels[name]["constexprs"]

    def upload(self, a):
        return self.torch.from_numpy(np.ascontiguousarray(a)).cuda()

    def download(self, t):
        self.torch.cuda.synchronize()
        return t.cpu().numpy()

    def function(self, name):
        if name not in self.loaded:
            k = self.kernels[name]
            t = k["targets"][self.target]
            ptx = (self.root / t["ptx"]).read_text()
            fn = self.driver.load(ptx, t["entry"], t["shared"])
            self.loaded[name] = (fn, t, k["args"])
            mma = "wgmma" if "wgmma.mma_async" in ptx else "mma.sync" if "mma.sync" in ptx else "none"
            # CU_FUNC_ATTRIBUTE_NUM_REGS = 4, LOCAL_SIZE_BYTES = 3 (spills), SHARED_SIZE_BYTES = 1 (static)
            self.info[name] = {"regs": self.driver.attribute(fn, 4), "local_bytes": self.driver.attribute(fn, 3),
                               "static_shared": self.driver.attribute(fn, 1), "dynamic_shared": t["shared"],
                               "mma": mma}
            print(f"loaded {self.target} {name}: {self.info[name]}", flush=True)
        return self.loaded[name]

    def launch(self, name, grid, args):
        fn, t, spec = self.function(name)
        if len(args) != len(spec):
            raise ValueError(f"{name}: {len(args)} arguments for {len(spec)}")
        vals = []
        for a, s in zip(args, spec):
            ty = s["type"]
            if ty.startswith("*"):
                vals.append(ctypes.c_uint64(a.data_ptr() if hasattr(a, "data_ptr") else int(a)))
            elif ty == "i32":
                vals.append(ctypes.c_int32(int(a)))
            elif ty == "i64":
                vals.append(ctypes.c_int64(int(a)))
            elif ty == "fp32":
                vals.append(ctypes.c_float(float(a)))
            else:
                raise ValueError(f"{name}: argument type {ty}")
        if t["global_scratch_size"] > 0:
            n = t["global_scratch_size"] * grid[0] * grid[1] * grid[2]
            if self.scratch.numel() < n:
                self.scratch = self.torch.zeros(n, dtype=self.torch.uint8, device="cuda")
        vals += [ctypes.c_uint64(self.scratch.data_ptr() if t["global_scratch_size"] > 0 else 0), ctypes.c_uint64(0)]
        self.driver.launch(fn, grid, 32 * t["num_warps"], t["shared"],
                           self.torch.cuda.current_stream().cuda_stream, vals)
