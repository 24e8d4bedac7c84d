#!/usr/bin/env python3
"""Trains the built-in scene model of `calibquant demo` and exports it for Java.

Run from the repository root on a GPU host (PyTorch 2.x, numpy; nothing is downloaded):

    python3 tools/model/train.py --digest 50                  # generator check: must print the Java test's digest
    python3 tools/model/train.py --smoke --out /tmp/smoke      # whole pipeline in seconds, tiny data
    python3 tools/model/train.py --out tools/model/out         # the real run: trains for --budget seconds
    python3 tools/model/train.py --out out2 --init-from out/model.safetensors --first-sample N   # and goes on

One run alone per GPU: three runs sharing an H100 made 7 steps/s each against 24 alone (2026-12-08).

Writes into --out: model.safetensors (fp16, the weights Java loads), logits_fixture.safetensors (reference logits
of a few test samples for the Java test), card.json (settings, accuracy, checks). Training stops at the wall-clock
budget and still evaluates and exports. The model, the task and the numerics are defined in scenes.py and
npmodel.py (plain NumPy), which the PyTorch model below must match: the script checks it does, on the exported
weights, and says so in card.json ("torch_vs_numpy_max_abs").
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import npmodel  # noqa: E402
import scenes  # noqa: E402

VISUAL_START = len(scenes.PREFIX)
SEQ_LEN = VISUAL_START + 256 + 1 + scenes.MAX_QUESTION + 1 + scenes.MAX_ANSWER  # 293


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output directory")
    p.add_argument("--smoke", action="store_true", help="a few steps on tiny data: checks the whole pipeline")
    p.add_argument("--digest", type=int, metavar="N", help="print the generator digest of N test samples and exit")
    p.add_argument("--budget", type=float, default=190.0, help="training wall-clock seconds (default 190)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1234, help="torch seed (initialisation)")
    p.add_argument("--init-from", metavar="SAFETENSORS",
                   help="start from these exported weights (a model.safetensors this script wrote) instead of a random "
                        "initialisation: training continues over several device calls, with a fresh optimizer, warm-up "
                        "and schedule each time (the training data continue from --first-sample)")
    p.add_argument("--first-sample", type=int, default=0,
                   help="index of the first training sample (default 0; a continued run passes the samples seen so "
                        "far, from the previous card.json, so that it sees new data)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (the export and the "
                   "evaluation use the plain module)")
    return p.parse_args()


# ---- data ----------------------------------------------------------------------------------------------------

def assemble(s):
    """Token rows [N, SEQ_LEN] (prompt, answer, <pad>s), labels [N, SEQ_LEN] (next token at answer positions,
    -100 elsewhere), prompt lengths [N]."""
    n = s["qlen"].shape[0]
    tokens = np.full((n, SEQ_LEN), scenes.PAD, dtype=np.int64)
    tokens[:, :VISUAL_START] = scenes.PREFIX
    tokens[:, VISUAL_START:VISUAL_START + 256] = scenes.IMAGE
    q0 = VISUAL_START + 256 + 1
    tokens[:, q0 - 1] = scenes.IMG_END
    labels = np.full((n, SEQ_LEN), -100, dtype=np.int64)
    prompt_len = q0 + s["qlen"] + 1
    for qlen in np.unique(s["qlen"]):
        m = s["qlen"] == qlen
        tokens[m, q0:q0 + qlen] = s["question"][m, :qlen]
        tokens[m, q0 + qlen] = scenes.ASSISTANT
        tokens[m, q0 + qlen + 1:q0 + qlen + 1 + scenes.MAX_ANSWER] = s["answer"][m]
    rows = np.arange(n)
    for i in range(scenes.MAX_ANSWER):
        m = i < s["alen"]
        # position prompt_len - 1 + i predicts answer token i
        labels[rows[m], prompt_len[m] - 1 + i] = s["answer"][m, i]
    return tokens, labels, prompt_len


def numpy_scene_slice(s, a, b):
    return {k: v[a:b] for k, v in s.items()}


# ---- model ---------------------------------------------------------------------------------------------------

def build_model(torch, c):
    nn = torch.nn
    F = torch.nn.functional

    class VisionAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(c["vision_dim"], 3 * c["vision_dim"])
            self.proj = nn.Linear(c["vision_dim"], c["vision_dim"])

        def forward(self, x):
            B, T, d = x.shape
            H = c["vision_heads"]
            q, k, v = self.qkv(x).view(B, T, 3, H, d // H).permute(2, 0, 3, 1, 4).unbind(0)
            o = F.scaled_dot_product_attention(q, k, v)
            return self.proj(o.transpose(1, 2).reshape(B, T, d))

    class VisionMlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(c["vision_dim"], c["vision_mlp"])
            self.fc2 = nn.Linear(c["vision_mlp"], c["vision_dim"])

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))

    class VisionBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(c["vision_dim"], eps=c["ln_eps"])
            self.attn = VisionAttention()
            self.norm2 = nn.LayerNorm(c["vision_dim"], eps=c["ln_eps"])
            self.mlp = VisionMlp()

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class Vision(nn.Module):
        def __init__(self):
            super().__init__()
            p = c["patch_size"]
            self.patch_embed = nn.Linear(p * p * 3, c["vision_dim"])
            self.pos_embed = nn.Parameter(torch.randn((c["image_size"] // p) ** 2, c["vision_dim"]) * 0.02)
            self.blocks = nn.ModuleList([VisionBlock() for _ in range(c["vision_layers"])])
            self.norm = nn.LayerNorm(c["vision_dim"], eps=c["ln_eps"])

        def forward(self, images):  # [B, S, S, 3] uint8
            B, S = images.shape[0], images.shape[1]
            p = c["patch_size"]
            s = S // p
            x = (images.float() - 127.5) / 127.5
            x = x.view(B, s, p, s, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(B, s * s, p * p * 3)
            x = self.patch_embed(x) + self.pos_embed
            for b in self.blocks:
                x = b(x)
            return self.norm(x)

    class Projector(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(c["vision_dim"], eps=c["ln_eps"])
            self.fc1 = nn.Linear(c["vision_dim"], c["hidden"])
            self.fc2 = nn.Linear(c["hidden"], c["hidden"])

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(self.norm(x)), approximate="tanh"))

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(c["hidden"]))

        def forward(self, x):
            x = x.float()
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c["rms_eps"]) * self.weight

    def rope(x, cos, sin):  # x [B, H, T, D]; cos, sin [T, D/2]
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            h, D = c["hidden"], c["head_dim"]
            self.q = nn.Linear(h, c["query_heads"] * D, bias=False)
            self.k = nn.Linear(h, c["kv_heads"] * D, bias=False)
            self.v = nn.Linear(h, c["kv_heads"] * D, bias=False)
            self.o = nn.Linear(c["query_heads"] * D, h, bias=False)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            QH, KH, D = c["query_heads"], c["kv_heads"], c["head_dim"]
            q = rope(self.q(x).view(B, T, QH, D).transpose(1, 2), cos, sin)
            k = rope(self.k(x).view(B, T, KH, D).transpose(1, 2), cos, sin)
            v = self.v(x).view(B, T, KH, D).transpose(1, 2)
            # query head h reads KV head h // (QH / KH)
            k = k.repeat_interleave(QH // KH, dim=1)
            v = v.repeat_interleave(QH // KH, dim=1).to(k.dtype)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o(o.transpose(1, 2).reshape(B, T, QH * D))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(c["hidden"], c["intermediate"], bias=False)
            self.up = nn.Linear(c["hidden"], c["intermediate"], bias=False)
            self.down = nn.Linear(c["intermediate"], c["hidden"], bias=False)

        def forward(self, x):
            return self.down(F.silu(self.gate(x)) * self.up(x))

    class DecoderLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn_norm = RMSNorm()
            self.attn = Attention()
            self.mlp_norm = RMSNorm()
            self.mlp = Mlp()

        def forward(self, x, cos, sin):
            x = x + self.attn(self.attn_norm(x), cos, sin)
            return x + self.mlp(self.mlp_norm(x))

    class Language(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(c["vocab_size"], c["hidden"])
            self.layers = nn.ModuleList([DecoderLayer() for _ in range(c["layers"])])
            self.norm = RMSNorm()
            self.lm_head = nn.Linear(c["hidden"], c["vocab_size"], bias=False)

    class SceneVLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision = Vision()
            self.projector = Projector()
            self.language = Language()
            cos, sin = npmodel.rope_tables(SEQ_LEN, c["head_dim"], c["rope_theta"])  # float64, then fp32
            self.register_buffer("rope_cos", torch.tensor(cos, dtype=torch.float32), persistent=False)
            self.register_buffer("rope_sin", torch.tensor(sin, dtype=torch.float32), persistent=False)
            for name, prm in self.named_parameters():
                if name.endswith(".bias"):
                    nn.init.zeros_(prm)
                elif prm.dim() == 2 and name != "vision.pos_embed":
                    std = 0.02
                    if name.endswith(("attn.o.weight", "mlp.down.weight", "attn.proj.weight", "mlp.fc2.weight")):
                        std = 0.02 / math.sqrt(2 * max(c["layers"], c["vision_layers"]))
                    nn.init.normal_(prm, std=std)

        def forward(self, images, tokens):
            visual = self.projector(self.vision(images))
            x = self.language.embed(tokens)
            n = visual.shape[1]
            x = torch.cat([x[:, :VISUAL_START], visual.to(x.dtype), x[:, VISUAL_START + n:]], dim=1)
            T = tokens.shape[1]
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
            for layer in self.language.layers:
                x = layer(x, cos, sin)
            return self.language.lm_head(self.language.norm(x))

    return SceneVLM()


# ---- evaluation ----------------------------------------------------------------------------------------------

def greedy_eval(torch, model, device, count, batch, autocast):
    """Greedy answers to test samples 0..count-1 (TEST_SEED); exact-match and token accuracy, overall and by type.
    Token accuracy: the share of the true answer's tokens (<eos> included) that the answer has at the same place."""
    s = scenes.generate(scenes.TEST_SEED, 0, count)
    tokens_all, _, prompt_len_all = assemble(s)
    exact = np.zeros(count, dtype=bool)
    token_hits = np.zeros(count)
    model.eval()
    with torch.no_grad():
        for a in range(0, count, batch):
            b = min(count, a + batch)
            sl = numpy_scene_slice(s, a, b)
            images = scenes.render(sl, torch, device)
            tokens = torch.as_tensor(tokens_all[a:b], device=device).clone()
            cur = torch.as_tensor(prompt_len_all[a:b], device=device).clone()
            rows = torch.arange(b - a, device=device)
            # blank everything from the answer on: the model must write it
            positions = torch.arange(SEQ_LEN, device=device)[None, :]
            tokens[positions >= cur[:, None]] = scenes.PAD
            done = torch.zeros(b - a, dtype=torch.bool, device=device)
            generated = torch.full((b - a, scenes.MAX_ANSWER), scenes.PAD, dtype=torch.long, device=device)
            for i in range(scenes.MAX_ANSWER):
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                    logits = model(images, tokens)
                nxt = logits[rows, cur - 1].float().argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, scenes.PAD), nxt)
                generated[:, i] = nxt
                write = ~done & (cur < SEQ_LEN)
                tokens[rows[write], cur[write]] = nxt[write]
                cur = cur + write.long()
                done = done | (nxt == scenes.EOS)
                if bool(done.all()):
                    break
            gen = generated.cpu().numpy()
            for j in range(b - a):
                truth = s["answer"][a + j, :s["alen"][a + j]]
                got = gen[j]
                eos = np.nonzero(got == scenes.EOS)[0]
                got = got[:eos[0] + 1] if len(eos) else got
                exact[a + j] = len(got) == len(truth) and bool((got == truth).all())
                m = min(len(got), len(truth))
                token_hits[a + j] = float((got[:m] == truth[:m]).sum()) / len(truth)
    model.train()
    by_type = {name: float(exact[s["qtype"] == t].mean()) for t, name in enumerate(scenes.QUESTION_TYPES)
               if (s["qtype"] == t).any()}
    return {"samples": count, "exact_match": float(exact.mean()), "token_accuracy": float(token_hits.mean()),
            "exact_match_by_type": by_type}


def fp16_state(model):
    return {k: v.detach().float().cpu().numpy().astype(np.float16) for k, v in model.state_dict().items()}


def check_state_names(state, c):
    expected = npmodel.expected_shapes(c)
    if set(state) != set(expected):
        raise SystemExit(f"state_dict names differ from npmodel.expected_shapes: extra {sorted(set(state) - set(expected))}"
                         f", missing {sorted(set(expected) - set(state))}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != tuple(shape):
            raise SystemExit(f"{k}: shape {tuple(state[k].shape)} != expected {shape}")


# ---- main ----------------------------------------------------------------------------------------------------

def main():
    args = parse_args()
    if args.digest:
        print(f"digest of test samples 0..{args.digest - 1} (seed {scenes.TEST_SEED}): "
              f"{scenes.digest(scenes.TEST_SEED, args.digest)}")
        print("the Java test TaskGeneratorTest.digestMatchesThePythonGenerator expects -9084263226765729123 for 50")
        return
    if not args.out:
        raise SystemExit("--out DIR is required (or --digest N)")
    started = time.time()
    import torch
    os.makedirs(args.out, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    c = npmodel.scene_config()
    if args.smoke:
        args.budget, args.batch, args.eval_samples = min(args.budget, 15.0), 8, 16
        max_steps = 5
    else:
        max_steps = 10 ** 9
    print(f"torch {torch.__version__}, device {device}, smoke={args.smoke}, budget {args.budget:.0f} s", flush=True)

    # The training images are drawn by torch; the Java side by the same integer rules (checked here on 64).
    probe = scenes.generate(scenes.TEST_SEED, 0, 64)
    if not np.array_equal(scenes.render(probe, torch, device).cpu().numpy(), scenes.render(probe, np)):
        raise SystemExit("torch and numpy draw different images: scenes.render is not portable here")
    digest50 = scenes.digest(scenes.TEST_SEED, 50)
    print(f"generator digest (50 test samples): {digest50}", flush=True)

    model = build_model(torch, c).to(device)
    check_state_names(model.state_dict(), c)
    previous = None
    if args.init_from:
        w, meta = npmodel.read_safetensors(args.init_from)
        if set(w) != set(npmodel.expected_shapes(c)):
            raise SystemExit(f"--init-from {args.init_from}: its tensors are not this model's")
        model.load_state_dict({k: torch.tensor(v.astype(np.float32)) for k, v in w.items()})
        previous = json.loads(meta.get("trained", "null"))
        print(f"continuing from {args.init_from} (trained before: {previous})", flush=True)
    forward = torch.compile(model) if args.compile else model
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {params} ({2 * params / 1e6:.2f} MB in fp16)", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    use_amp = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    warmup = 150
    chunk = 16 * args.batch if not args.smoke else 4 * args.batch
    next_sample = args.first_sample
    step = 0
    seen = 0
    loss_log = []
    train_start = time.time()
    stop_reason = "step limit"
    data = None
    pos = 0
    while step < max_steps:
        elapsed = time.time() - train_start
        if elapsed >= args.budget:
            stop_reason = "time budget"
            break
        if data is None or pos + args.batch > chunk:
            s = scenes.generate(scenes.TRAIN_SEED, next_sample, chunk)
            next_sample += chunk
            tokens_np, labels_np, _ = assemble(s)
            data = ({k: torch.as_tensor(v, device=device) for k, v in s.items()},
                    torch.as_tensor(tokens_np, device=device), torch.as_tensor(labels_np, device=device))
            pos = 0
        scene_all, tokens_all, labels_all = data
        sl = {k: v[pos:pos + args.batch] for k, v in scene_all.items()}
        images = scenes.render(sl, torch, device)
        tokens = tokens_all[pos:pos + args.batch]
        labels = labels_all[pos:pos + args.batch]
        pos += args.batch

        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / args.budget))))
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = forward(images, tokens)
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, c["vocab_size"]), labels.reshape(-1),
                                                 ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += args.batch
        if step % 100 == 0 or args.smoke:
            value = float(loss)
            loss_log.append([step, round(time.time() - train_start, 1), value])
            print(f"step {step} t={time.time() - train_start:.0f}s lr={lr:.2e} loss={value:.4f}", flush=True)
    train_seconds = time.time() - train_start
    print(f"stopped after {step} steps, {seen} samples, {train_seconds:.0f} s ({stop_reason})", flush=True)

    # Export fp16, then evaluate the fp16-rounded weights in fp32 (what Java runs).
    state = fp16_state(model)
    check_state_names(state, c)
    weights_path = os.path.join(args.out, "model.safetensors")
    meta = npmodel.weights_metadata(c, scenes.WORDS)
    trained = {"steps": step, "samples": seen, "seconds": round(train_seconds, 1)}
    if previous:  # the whole history: what this run continued, plus this run
        trained = {k: round(previous.get(k, 0) + trained[k], 1) if k == "seconds" else previous.get(k, 0) + trained[k]
                   for k in trained}
        trained["runs"] = previous.get("runs", 1) + 1
    meta["trained"] = json.dumps(trained)
    npmodel.write_safetensors(weights_path, {k: state[k] for k in npmodel.expected_shapes(c)}, meta)
    model.load_state_dict({k: torch.tensor(v.astype(np.float32)) for k, v in state.items()})
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    eval_batch = 250 if not args.smoke else 16
    accuracy = greedy_eval(torch, model, device, args.eval_samples, eval_batch, autocast=False)
    print(f"fp32 greedy accuracy on {args.eval_samples} test samples: exact {accuracy['exact_match']:.4f}, "
          f"token {accuracy['token_accuracy']:.4f}, by type {accuracy['exact_match_by_type']}", flush=True)

    # Reference logits (NumPy float64 on the fp16 weights) for Java, and the PyTorch fp32 CPU model against them.
    w32 = {k: v.astype(np.float32) for k, v in state.items()}
    fixture_samples = 3 if not args.smoke else 1
    fixture_path = os.path.join(args.out, "logits_fixture.safetensors")
    fp32_gap = npmodel.write_fixture(fixture_path, w32, c, scenes.TEST_SEED, fixture_samples)
    fixture, _ = npmodel.read_safetensors(fixture_path)
    cpu_model = build_model(torch, c)
    cpu_model.load_state_dict({k: torch.tensor(v) for k, v in w32.items()})
    cpu_model.eval()
    torch_gap = 0.0
    with torch.no_grad():
        for i in range(fixture_samples):
            image = torch.tensor(fixture[f"sample{i}.pixels"].astype(np.uint8))[None]
            toks = torch.tensor(fixture[f"sample{i}.tokens"].astype(np.int64))[None]
            got = cpu_model(image, toks)[0].numpy()
            torch_gap = max(torch_gap, float(np.abs(got - fixture[f"sample{i}.logits"]).max()))
    consistent = torch_gap <= 1e-3
    print(f"PyTorch fp32 vs NumPy float64 logits: max |diff| {torch_gap:.3g} (NumPy fp32 vs float64: {fp32_gap:.3g})"
          f" -> {'OK' if consistent else 'MISMATCH: the torch model and npmodel.py disagree'}", flush=True)

    card = {
        "task": "scene QA (tools/model/scenes.py, dev.calibquant.model.TaskGenerator); train seed "
                f"{scenes.TRAIN_SEED}, test seed {scenes.TEST_SEED}",
        "generator_digest_50": str(digest50),
        "config": c, "parameters": params, "weights_bytes": os.path.getsize(weights_path),
        "training": {"steps": step, "samples": seen, "batch": args.batch, "peak_lr": args.lr, "warmup_steps": warmup,
                     "schedule": "linear warmup, cosine over the wall-clock budget to 2%", "optimizer":
                     "AdamW(0.9, 0.98), weight decay 0.05 on matrices, grad clip 1.0", "precision": "bf16 autocast",
                     "budget_seconds": args.budget, "seconds": round(train_seconds, 1), "stopped_by": stop_reason,
                     "torch_seed": args.seed, "loss_log": loss_log, "init_from": args.init_from,
                     "first_sample": args.first_sample, "compiled": args.compile, "history": trained},
        "accuracy_fp32_fp16_weights": accuracy,
        "torch_vs_numpy_max_abs": torch_gap, "numpy_fp32_gap": fp32_gap, "torch_matches_numpy": consistent,
        "torch": torch.__version__, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "smoke": args.smoke, "total_seconds": round(time.time() - started, 1),
    }
    with open(os.path.join(args.out, "card.json"), "w") as f:
        json.dump(card, f, indent=1)
    print(f"wrote {weights_path} ({card['weights_bytes']} bytes), {fixture_path}, card.json in "
          f"{card['total_seconds']} s", flush=True)
    if not consistent:
        sys.exit(3)


if __name__ == "__main__":
    main()
