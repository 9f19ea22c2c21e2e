"""Time the fused Titans op (forward + backward) against the torch chunk path and fla.

    python bench/titans_fused.py --device cuda            # T = 4K, 16K; H = 12 (760M) and 16 (1.3B), D = 128
    python bench/titans_fused.py --device cpu             # Triton interpreter, one tiny shape

Rows, per shape: `fused` (titans_fused), `chunk` (titans_chunk, autograd), `fla_per_chunk`
(titans_fla, fla's kernel once per self-modification chunk, where hope_mega.ops.fla_chunked
exists) and `fla_gdn` (one chunk_gated_delta_rule call over the whole sequence with one memory of
value width D: plain Gated DeltaNet, not the same computation, a floor for what a chunk-parallel
kernel costs). `--check` also prints the fused op's errors against chunk on each shape.
On CPU the interpreter runs the kernels in numpy: the figures there only show that it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--chunk-size", type=int, help="default: 64 on cuda, 16 on cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-lens", type=int, nargs="*", help="default: 4096 16384 on cuda, 64 on cpu")
    p.add_argument("--heads", type=int, nargs="*", help="default: 12 16 on cuda (760M, 1.3B), 2 on cpu")
    p.add_argument("--head-dim", type=int, help="default: 128 on cuda, 16 on cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="input dtype (default bf16 on cuda)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--skip", nargs="*", default=[], help="rows to leave out (e.g. chunk at 16K)")
    p.add_argument("--dot-precision", default=None, help="fused kernels' tl.dot precision on cuda: tf32x3 (default), ieee, tf32")
    p.add_argument("--compile-for", type=int, metavar="SM", help="only compile the kernels for this CUDA arch "
                   "(e.g. 90), no GPU needed: prints compile time, shared memory, local-memory spills")
    p.add_argument("--check", action="store_true", help="also print fused vs chunk errors")
    return p.parse_args()


args = parse_args()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
if args.device == "cpu":
    # Before anything imports triton. The project's interpreter setup also lets fla's autotuned
    # kernels run; the fused kernels need only the environment variable.
    try:
        from hope_mega.ops.triton_cpu import enable_triton_interpreter
    except ImportError:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        enable_triton_interpreter()

import torch  # noqa: E402

from hope_mega.ops.chunk import titans_chunk  # noqa: E402
from hope_mega.ops import fused  # noqa: E402
from hope_mega.ops.fused import titans_fused  # noqa: E402


def make_inputs(B, T, H, D, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    us = [rand(B, T, H, D, scale=D**-0.5 * 3).to(dtype) for _ in range(5)]
    params = [
        rand(H, 6, D, D, scale=0.02),  # s0
        rand(H, D, scale=D**-0.5),  # w_eta
        torch.zeros(H, device=device),  # b_eta
        rand(H, D, scale=D**-0.5),  # w_alpha
        rand(H, scale=0.5) - 4.0,  # b_alpha
        torch.rand(H, generator=g).to(device) * 2.7,  # a_log
    ]
    return [t.requires_grad_(True) for t in us + params]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_fwd_bwd(fn, leaves, device, repeats):
    """Median seconds of forward and of forward + backward, and peak memory (cuda)."""

    def step(backward):
        for x in leaves:
            x.grad = None
        o = fn(*leaves)
        if backward:
            o.float().square().mean().backward()

    step(True)  # warm-up: compilation, autotuning, allocator
    sync(device)
    out = {}
    for name, backward in (("fwd_ms", False), ("fwd_bwd_ms", True)):
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            if backward:
                step(True)
            else:
                with torch.no_grad():
                    step(False)
            sync(device)
            times.append(time.perf_counter() - t0)
        out[name] = round(sorted(times)[len(times) // 2] * 1e3, 3)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step(True)
        sync(device)
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


def fla_gdn_leaves(B, T, H, D, dtype, device):
    import torch.nn.functional as F

    g = torch.Generator(device="cpu").manual_seed(1)
    q, k, v = (F.normalize(torch.randn(B, T, H, D, generator=g), dim=-1).to(device, dtype) for _ in range(3))
    gate = F.logsigmoid(torch.randn(B, T, H, generator=g) + 4.0).to(device)
    beta = torch.rand(B, T, H, generator=g).to(device, dtype)
    return [t.requires_grad_(True) for t in (q, k, v, gate, beta)]


def check(leaves, C):
    def run(op):
        xs = [x.detach().clone().requires_grad_(True) for x in leaves]
        o, s = op(*xs, chunk_size=C, output_final_state=True)
        gen = torch.Generator(device="cpu").manual_seed(2)
        w = torch.randn(o.shape, generator=gen).to(o.device)
        ((o * w).sum() + s.square().sum()).backward()
        return o.detach(), s.detach(), [x.grad.float() for x in xs]

    (o_a, s_a, g_a), (o_b, s_b, g_b) = run(titans_chunk), run(titans_fused)
    names = ["u_q", "u_k", "u_v", "u_eta", "u_alpha", "s0", "w_eta", "b_eta", "w_alpha", "b_alpha", "a_log"]
    return {
        "o_abs": (o_a - o_b).abs().max().item(),
        "final_abs": (s_a - s_b).abs().max().item(),
        "grad_rel_max": max(((a - b).norm() / a.norm().clamp_min(1e-30)).item() for a, b in zip(g_a, g_b)),
        "grad_rel": {n: round(((a - b).norm() / a.norm().clamp_min(1e-30)).item(), 8) for n, a, b in zip(names, g_a, g_b)},
    }


def compile_only(sm: int):
    """Compile both kernels for a CUDA target without a device, at the model's head width, and
    report what ptxas says about registers and spills."""
    import contextlib
    import io
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hope_mega.ops import fused_kernels

    triton.knobs.nvidia.dump_ptxas_log = True
    D = args.head_dim or 128
    C = args.chunk_size or 64
    prec = args.dot_precision or fused.DOT_PRECISION
    consts = dict(H=16, D=D, C=C, BC=max(16, C), EPS=fused.NORM_EPS, PREC=prec)
    for kern in (fused_kernels._titans_fwd_kernel, fused_kernels._titans_bwd_kernel):
        names = list(kern.arg_names)
        sig = {n: "constexpr" if n in consts else "*i64" if n in ("CU", "SLOT0")
               else "*bf16" if n in ("UQ", "UK", "UV", "UE", "UA") else "*fp32" for n in names}
        src = ASTSource(fn=kern, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
        t0 = time.perf_counter()
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", sm, 32),
                                      options=dict(num_warps=fused._num_warps(D), num_stages=1))
        text = log.getvalue()
        found = lambda pat: [int(x) for x in re.findall(pat, text)]  # noqa: E731
        print(json.dumps({"kernel": kern.fn.__name__, "sm": sm, "D": D, "C": C, "dot_precision": prec,
                          "compile_s": round(time.perf_counter() - t0, 1),
                          "shared_bytes": compiled.metadata.shared,
                          "registers": found(r"Used (\d+) registers"),
                          "spill_store_bytes": found(r"(\d+) bytes spill stores"),
                          "stack_frame_bytes": found(r"(\d+) bytes stack frame")}), flush=True)


def main():
    if args.compile_for:
        return compile_only(args.compile_for)
    dev = args.device
    cuda = dev == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    seq_lens = args.seq_lens or ([4096, 16384] if cuda else [64])
    heads = args.heads or ([12, 16] if cuda else [2])
    D = args.head_dim or (128 if cuda else 16)
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    repeats = args.repeats or (5 if cuda else 1)
    C, B = args.chunk_size or (64 if cuda else 16), args.batch
    if args.dot_precision:
        fused.DOT_PRECISION = args.dot_precision

    try:
        from hope_mega.ops.fla_chunked import titans_fla
    except ImportError:
        titans_fla = None
    rows = {
        "fused": lambda *x: titans_fused(*x, chunk_size=C)[0],
        "chunk": lambda *x: titans_chunk(*x, chunk_size=C)[0],
    }
    if titans_fla is not None and (cuda or "TRITON_INTERPRET" in os.environ):
        rows["fla_per_chunk"] = lambda *x: titans_fla(*x, chunk_size=C)[0]

    for H in heads:
        for T in seq_lens:
            shape = dict(B=B, T=T, H=H, D=D, C=C, dtype=str(dtype).split(".")[-1], device=dev,
                         dot_precision=fused.DOT_PRECISION if cuda else "ieee")
            leaves = make_inputs(B, T, H, D, dtype, dev)
            result = {"shape": shape}
            for name, fn in rows.items():
                if name in args.skip:
                    continue
                try:
                    result[name] = time_fwd_bwd(fn, leaves, dev, repeats)
                except torch.cuda.OutOfMemoryError:
                    result[name] = "out of memory"
                    torch.cuda.empty_cache()
            if "fla_gdn" not in args.skip:
                from fla.ops.gated_delta_rule import chunk_gated_delta_rule

                gdn = fla_gdn_leaves(B, T, H, D, dtype, dev)
                result["fla_gdn"] = time_fwd_bwd(
                    lambda q, k, v, g, b: chunk_gated_delta_rule(q, k, v, g, b, scale=1.0)[0], gdn, dev, repeats
                )
            if args.check:
                result["fused_vs_chunk"] = check(leaves, C)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
