"""The one definition of what the CalibQuant kernels and their callers must agree on, besides argument lists: the
columns of the int64 tables the kernels read, and the int32 scratch layouts they share with the host.

Plain Python (no Triton): compile_ptx.py copies schema() into manifest.json as "interface"; Java checks its own
constants against that at load (KernelInterface) and in a test on every machine; the harness and ptx/README.md
describe the same tables. The kernel sources still spell these constants out (they predate this module; importing it
changes their hashes, so it waits for the next recompile): check_kernel_sources() holds them to it, and compile_ptx.py
refuses to compile when they disagree.
"""
import re
from pathlib import Path

# int64 rows; offsets count elements of the buffer they index and are multiples of 16
TABLES = {
    "seq_tab": ["fp_off", "fp_len", "fp_cap", "q_off", "work_first", "work_count"],
    "span_tab": ["code_off", "tokens", "scale_off", "mm_first", "mm_count"],
    "work_tab": ["seq", "span", "t0", "tn"],  # span -1: the sequence's full-precision block
    "mm_tab": ["seq", "span", "t0", "tn"],
    "qs_tab": ["src_off", "src_cap", "src_t0", "tokens", "code_off", "scale_off", "chunk_first", "chunk_count"],
}

# int32 counts of the scratch buffers the host sizes and zeroes
SCRATCH = {
    "rendezvous_slot_ints": 32,  # one-launch decode (mode 3): mm_buf holds a header slot, then one per (span, KV head)
    "quantize_sync_head": 4,  # quantize_pack: sync[0] is the ticket counter, alone in its 16 bytes
    "quantize_sync_per_group": 4,  # then per group: arrived, three unused
}

# the constexprs each kernel source spells out, and the interface value each must equal
KERNEL_CONSTANTS = {
    "attention.py": {"SEQ_COLS": len(TABLES["seq_tab"]), "SPAN_COLS": len(TABLES["span_tab"]),
                     "WORK_COLS": len(TABLES["work_tab"]), "MM_COLS": len(TABLES["mm_tab"])},
    "attention_gluon.py": {"SEQ_COLS": len(TABLES["seq_tab"]), "SPAN_COLS": len(TABLES["span_tab"]),
                           "WORK_COLS": len(TABLES["work_tab"]), "MM_COLS": len(TABLES["mm_tab"]),
                           "SLOT_INTS": SCRATCH["rendezvous_slot_ints"]},
    "quantize.py": {"QS_COLS": len(TABLES["qs_tab"]), "SYNC_HEAD": SCRATCH["quantize_sync_head"],
                    "SYNC_COLS": SCRATCH["quantize_sync_per_group"]},
}


def schema():
    """The manifest's "interface" section."""
    return {"tables": {name: list(cols) for name, cols in TABLES.items()}, "scratch": dict(SCRATCH)}


def check_kernel_sources(kernels_dir=None):
    """Where a kernel source's constexpr disagrees with this module (or is missing): a list of sentences."""
    kernels_dir = Path(kernels_dir) if kernels_dir else Path(__file__).resolve().parent
    problems = []
    for file, constants in KERNEL_CONSTANTS.items():
        text = (kernels_dir / file).read_text()
        for name, want in constants.items():
            found = re.findall(r"^" + name + r"\s*=\s*(?:tl|gl)\.constexpr\((\d+)\)", text, re.MULTILINE)
            if len(found) != 1:
                problems.append(f"{file}: {name} is defined {len(found)} times, expected once as a constexpr")
            elif int(found[0]) != want:
                problems.append(f"{file}: {name} = {found[0]}, the interface says {want}")
    return problems
