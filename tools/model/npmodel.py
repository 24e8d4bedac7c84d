"""The scene model's forward pass in plain NumPy (float64 or float32), the safetensors format by hand, and random
weights: the reference that the Java model (dev.calibquant.model) and the PyTorch model (train.py) are both checked
against. Needs only numpy.

Definitions (shared with train.py and the Java code, keep them in step):
  pixels p in 0..255 -> (p - 127.5) / 127.5; patches row-major, inside a patch (dy, dx, channel)
  ViT block: x += proj(attn(LN1(x))); x += fc2(gelu_tanh(fc1(LN2(x)))); qkv rows are [q | k | v], each [heads][hd]
  LayerNorm: biased variance, eps inside the sqrt; projector: LN -> fc1 -> gelu_tanh -> fc2
  decoder block: x += o(attn(rms(x))); x += down(silu(gate(rms(x))) * up(rms(x))); rms(x) = x / sqrt(mean(x^2)+eps) * w
  RoPE rotate-half: angle(pos, i) = pos * theta^(-2i/D) for i < D/2, computed in float64; q head h uses kv head
  h // (query_heads / kv_heads); causal softmax(q k^T / sqrt(D)); logits = lm_head(rms(x))
"""
import json
import struct

import numpy as np

FORMAT = "calibquant-scene-vlm/1"


def scene_config():
    return dict(image_size=64, patch_size=4, vision_dim=128, vision_layers=4, vision_heads=4, vision_mlp=512,
                hidden=256, layers=4, query_heads=4, kv_heads=2, head_dim=128, intermediate=512, vocab_size=48,
                rope_theta=10000.0, rms_eps=1e-6, ln_eps=1e-6)


def tiny_config():
    """A small random model for the Java tests: same task and prompt, small widths."""
    return dict(image_size=64, patch_size=4, vision_dim=16, vision_layers=1, vision_heads=2, vision_mlp=32,
                hidden=32, layers=2, query_heads=4, kv_heads=2, head_dim=16, intermediate=48, vocab_size=48,
                rope_theta=10000.0, rms_eps=1e-6, ln_eps=1e-6)


def expected_shapes(c):
    """Every tensor of a weights file and its shape, in the order WeightNames.java lists them."""
    vd, h = c["vision_dim"], c["hidden"]
    tokens = (c["image_size"] // c["patch_size"]) ** 2
    m = {"vision.patch_embed.weight": (vd, c["patch_size"] ** 2 * 3), "vision.patch_embed.bias": (vd,),
         "vision.pos_embed": (tokens, vd)}
    for i in range(c["vision_layers"]):
        b = f"vision.blocks.{i}."
        m.update({b + "norm1.weight": (vd,), b + "norm1.bias": (vd,), b + "attn.qkv.weight": (3 * vd, vd),
                  b + "attn.qkv.bias": (3 * vd,), b + "attn.proj.weight": (vd, vd), b + "attn.proj.bias": (vd,),
                  b + "norm2.weight": (vd,), b + "norm2.bias": (vd,), b + "mlp.fc1.weight": (c["vision_mlp"], vd),
                  b + "mlp.fc1.bias": (c["vision_mlp"],), b + "mlp.fc2.weight": (vd, c["vision_mlp"]),
                  b + "mlp.fc2.bias": (vd,)})
    m.update({"vision.norm.weight": (vd,), "vision.norm.bias": (vd,), "projector.norm.weight": (vd,),
              "projector.norm.bias": (vd,), "projector.fc1.weight": (h, vd), "projector.fc1.bias": (h,),
              "projector.fc2.weight": (h, h), "projector.fc2.bias": (h,),
              "language.embed.weight": (c["vocab_size"], h)})
    q, kv = c["query_heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
    for i in range(c["layers"]):
        b = f"language.layers.{i}."
        m.update({b + "attn_norm.weight": (h,), b + "attn.q.weight": (q, h), b + "attn.k.weight": (kv, h),
                  b + "attn.v.weight": (kv, h), b + "attn.o.weight": (h, q), b + "mlp_norm.weight": (h,),
                  b + "mlp.gate.weight": (c["intermediate"], h), b + "mlp.up.weight": (c["intermediate"], h),
                  b + "mlp.down.weight": (h, c["intermediate"])})
    m.update({"language.norm.weight": (h,), "language.lm_head.weight": (c["vocab_size"], h)})
    return m


def random_weights(c, seed):
    """Weights of plausible scale (fan-in scaled normals, norms near 1) rounded to fp16, as float32 arrays."""
    rng = np.random.default_rng(seed)
    w = {}
    for name, shape in expected_shapes(c).items():
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm.weight"):
            a = 1 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            a = 0.05 * rng.standard_normal(shape)
        elif name in ("vision.pos_embed", "language.embed.weight"):
            a = 0.5 * rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / np.sqrt(shape[1])
        w[name] = a.astype(np.float16).astype(np.float32)
    return w


# ---- safetensors, by hand -------------------------------------------------------------------------------------

_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}
_NP = {"F16": np.float16, "F32": np.float32, "BF16": None}


def write_safetensors(path, tensors, metadata):
    """tensors: name -> numpy array (float16 or float32), written in insertion order; metadata: str -> str."""
    header = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    blobs = []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        if a.dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype {a.dtype} is not float16 or float32")
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(data[b:end], dtype=np.dtype(_NP[e["dtype"]]).newbyteorder("<")).reshape(e["shape"])
    return out, meta


def weights_metadata(c, vocab):
    return {"format": FORMAT, "config": json.dumps(c), "vocab": json.dumps(vocab)}


# ---- forward -----------------------------------------------------------------------------------------------

def _layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def rope_tables(positions, head_dim, theta):
    """cos, sin [positions, head_dim/2], computed in float64."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angle = np.arange(positions, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(angle), np.sin(angle)


def _rotate(x, cos, sin):
    """x [T, heads, D]; rotate-half RoPE."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def patches(image, patch):
    """[S, S, 3] uint8 -> [(S/p)^2, p*p*3] of (pixel - 127.5) / 127.5."""
    s = image.shape[0] // patch
    x = image.reshape(s, patch, s, patch, 3).transpose(0, 2, 1, 3, 4).reshape(s * s, patch * patch * 3)
    return x


def encode(w, c, image, dt):
    f = lambda name: w[name].astype(dt)
    x = (patches(image, c["patch_size"]).astype(dt) - dt(127.5)) / dt(127.5)
    x = x @ f("vision.patch_embed.weight").T + f("vision.patch_embed.bias") + f("vision.pos_embed")
    vd, heads = c["vision_dim"], c["vision_heads"]
    hd = vd // heads
    T = x.shape[0]
    eps = c["ln_eps"]
    for i in range(c["vision_layers"]):
        b = f"vision.blocks.{i}."
        qkv = _layer_norm(x, f(b + "norm1.weight"), f(b + "norm1.bias"), eps) @ f(b + "attn.qkv.weight").T \
            + f(b + "attn.qkv.bias")
        qkv = qkv.reshape(T, 3, heads, hd)
        q, k, v = qkv[:, 0].transpose(1, 0, 2), qkv[:, 1].transpose(1, 0, 2), qkv[:, 2].transpose(1, 0, 2)
        a = _softmax(q @ k.transpose(0, 2, 1) / np.sqrt(hd).astype(dt)) @ v  # [heads, T, hd]
        x = x + a.transpose(1, 0, 2).reshape(T, vd) @ f(b + "attn.proj.weight").T + f(b + "attn.proj.bias")
        hdn = _layer_norm(x, f(b + "norm2.weight"), f(b + "norm2.bias"), eps) @ f(b + "mlp.fc1.weight").T \
            + f(b + "mlp.fc1.bias")
        x = x + _gelu_tanh(hdn) @ f(b + "mlp.fc2.weight").T + f(b + "mlp.fc2.bias")
    x = _layer_norm(x, f("vision.norm.weight"), f("vision.norm.bias"), eps)
    x = _layer_norm(x, f("projector.norm.weight"), f("projector.norm.bias"), eps)
    x = _gelu_tanh(x @ f("projector.fc1.weight").T + f("projector.fc1.bias"))
    return x @ f("projector.fc2.weight").T + f("projector.fc2.bias")


def forward(w, c, image, tokens, visual_start, dt=np.float64):
    """Logits [T, vocab] of every position of `tokens` (visual tokens from `image` at visual_start...)."""
    visual = encode(w, c, image, dt)
    f = lambda name: w[name].astype(dt)
    T = len(tokens)
    x = f("language.embed.weight")[np.asarray(tokens)]
    x[visual_start:visual_start + visual.shape[0]] = visual
    qh, kvh, D = c["query_heads"], c["kv_heads"], c["head_dim"]
    cos, sin = rope_tables(T, D, c["rope_theta"])
    cos, sin = cos.astype(dt), sin.astype(dt)
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    eps = c["rms_eps"]
    for i in range(c["layers"]):
        b = f"language.layers.{i}."
        h = _rms_norm(x, f(b + "attn_norm.weight"), eps)
        q = _rotate((h @ f(b + "attn.q.weight").T).reshape(T, qh, D), cos, sin).transpose(1, 0, 2)
        k = _rotate((h @ f(b + "attn.k.weight").T).reshape(T, kvh, D), cos, sin).transpose(1, 0, 2)
        v = (h @ f(b + "attn.v.weight").T).reshape(T, kvh, D).transpose(1, 0, 2)
        k = np.repeat(k, qh // kvh, axis=0)
        v = np.repeat(v, qh // kvh, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(D).astype(dt)
        s = np.where(mask[None], -np.inf, s)
        a = (_softmax(s) @ v).transpose(1, 0, 2).reshape(T, qh * D)
        x = x + a @ f(b + "attn.o.weight").T
        h = _rms_norm(x, f(b + "mlp_norm.weight"), eps)
        g = h @ f(b + "mlp.gate.weight").T
        x = x + (g / (1 + np.exp(-g)) * (h @ f(b + "mlp.up.weight").T)) @ f(b + "mlp.down.weight").T
    return _rms_norm(x, f("language.norm.weight"), eps) @ f("language.lm_head.weight").T


def write_fixture(path, w, c, seed, count):
    """Reference logits for samples 0..count-1 of the scene task (seed `seed`), teacher-forced on prompt + true
    answer: per sample pixels [S, S, 3], tokens [T] and float64-reference logits [T, vocab] (all stored as F32),
    and in the metadata the largest gap between this forward pass in float32 and in float64 (the scale of fp32
    rounding for this model on these inputs). Returns that gap."""
    import scenes
    s = scenes.generate(seed, 0, count)
    images = scenes.render(s, np)
    visual = (c["image_size"] // c["patch_size"]) ** 2
    tensors = {}
    gap = 0.0
    for i in range(count):
        tokens = scenes.prompt_tokens(s["question"][i], s["qlen"][i], visual) + list(s["answer"][i, :s["alen"][i]])
        exact = forward(w, c, images[i], tokens, len(scenes.PREFIX), np.float64)
        single = forward(w, c, images[i], tokens, len(scenes.PREFIX), np.float32)
        gap = max(gap, float(np.abs(single.astype(np.float64) - exact).max()))
        tensors[f"sample{i}.pixels"] = images[i].astype(np.float32)
        tensors[f"sample{i}.tokens"] = np.asarray(tokens, dtype=np.float32)
        tensors[f"sample{i}.logits"] = exact.astype(np.float32)
    write_safetensors(path, tensors, {"samples": str(count), "seed": str(seed), "visual_start": str(len(scenes.PREFIX)),
                                      "fp32_gap": repr(gap), "config": json.dumps(c)})
    return gap


if __name__ == "__main__":
    import os
    import sys
    import scenes
    if len(sys.argv) != 3 or sys.argv[1] != "tiny-fixture":
        sys.exit("usage: python3 npmodel.py tiny-fixture OUT_DIR   (random tiny model + its reference logits)")
    out = sys.argv[2]
    os.makedirs(out, exist_ok=True)
    c = tiny_config()
    w = random_weights(c, 20250305)
    write_safetensors(os.path.join(out, "tiny-random.safetensors"), {k: v.astype(np.float16) for k, v in w.items()},
                      weights_metadata(c, scenes.WORDS))
    gap = write_fixture(os.path.join(out, "tiny-random-logits.safetensors"), w, c, scenes.TEST_SEED, 3)
    print(f"wrote {out}/tiny-random.safetensors and tiny-random-logits.safetensors; fp32 gap {gap:.3g}")
