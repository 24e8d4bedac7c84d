"""Append one decoded token's keys and values to each sequence's full-precision block."""
import triton
import triton.language as tl

APPEND_TOKEN_ARGS = [
    ("kfp", "*fp16"), ("vfp", "*fp16"), ("knew", "*fp16"), ("vnew", "*fp16"), ("seq_tab", "*i64"), ("KVH", "i32"),
]


@triton.jit
def append_token(kfp, vfp, knew, vnew, seq_tab, KVH, D: tl.constexpr):
    """grid (num_seqs, KVH): row fp_len of head kvh of sequence s <- knew/vnew[s][kvh][:]. The table is not
    changed (the host advances fp_len); a sequence whose block is full (fp_len >= fp_cap) is left untouched."""
    s = tl.program_id(0)
    kvh = tl.program_id(1)
    row = seq_tab + s * 6
    fp_off = tl.multiple_of(tl.load(row), 16)
    fp_len = tl.load(row + 1)
    fp_cap = tl.load(row + 2)
    d = tl.arange(0, D)
    src = (s.to(tl.int64) * KVH + kvh) * D + d
    dst = fp_off + (kvh * fp_cap + fp_len) * D + d
    ok = (d < D) & (fp_len < fp_cap)
    tl.store(kfp + dst, tl.load(knew + src), mask=ok)
    tl.store(vfp + dst, tl.load(vnew + src), mask=ok)
