"""Titans op timings, as ratios against baselines measured in the same process.

CPU (`--device cpu`, the default without a GPU):
    python bench/titans_op.py --device cpu [--T 2048 --heads 4 --head-dim 64 --chunk-size 64]
  1. fwd+bwd of `titans_reference` vs `titans_chunk` at T (one sequence), as a ratio;
  2. fwd+bwd of one Titans mixer next to one causal-attention mixer of the same width at
     T = 1K, 2K, 4K, 8K, so the growth with T is visible (linear vs quadratic).
    python bench/titans_op.py --device cpu --memory mlp [--T 2048 --heads 4 --head-dim 64]
  the MLP memories (spec §2b, hidden width --memory-expansion x d_h): 1. fwd+bwd of
  `titans_mlp_reference` vs `titans_mlp_chunk` at T; 2. fwd+bwd of the MLP chunk op next to the
  matrix-memory chunk op at T = 1K, 2K, 4K, 8K, same process.

GPU (`--device cuda`):
    python bench/titans_op.py --device cuda [--check]
  Tokens/s of the op forward + backward at T = 4K and 16K for the head counts of hope-760m
  (H = 12) and hope-1.3b (H = 16), d_h = 128, C = 64, bf16 inputs. Rows: `fused` (titans_fused,
  the GPU path), `chunk` (titans_chunk, autograd), `fla_per_chunk` (fla's kernel once per
  self-modification chunk), `fla_gdn` (one chunk_gated_delta_rule over the whole sequence with
  one memory of value width d_h: plain Gated DeltaNet, a floor for what a chunk-parallel kernel
  costs) and `sdpa` (causal softmax attention, same heads, torch SDPA: flash attention on H100).
  Each shape line ends with fused/fla_gdn and fused/sdpa time ratios. `--check` adds the fused op's
  relative RMS errors against the chunk path (fla's test metric) on every shape.
    python bench/titans_op.py --device cuda --memory mlp
  the MLP chunk op (`mlp_chunk`, torch) beside the matrix-memory fused op at hope-mlp-760m's shapes
  (H = 16, d_h = 64, hidden 128, C = 64), T = 4K and 16K.

    python bench/titans_op.py --whole-model --device cuda
  Whole-model training tokens/s, peak memory and Hope-aware MFU of hope-760m and transformer-760m
  on one GPU (bench/train_throughput.py with its GPU defaults).

Without a GPU:
    python bench/titans_op.py --compile-for 90 [--head-dim 128 --chunk-size 64]
  compiles the fused kernels for that CUDA architecture and prints shared memory, registers and
  spills as ptxas reports them (what decides whether the kernels launch at all).
    python bench/titans_op.py --device cpu --interpret
  runs the GPU rows' fused kernel under Triton's interpreter on a tiny shape: it only shows the
  code path runs; the times mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--T", type=int, default=2048, help="cpu: length of the reference/chunk comparison")
    p.add_argument("--seq-lens", type=int, nargs="*", help="cuda: default 4096 16384")
    p.add_argument("--heads", type=int, nargs="*", help="default: 12 16 on cuda (760M, 1.3B), 4 on cpu")
    p.add_argument("--head-dim", type=int, help="default: 128 on cuda, 64 on cpu")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--memory", choices=["linear", "mlp"], default="linear", help="the Titans memories to time")
    p.add_argument("--memory-expansion", type=int, default=2, help="mlp: hidden width / d_h")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="input dtype (default bf16 on cuda)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--skip", nargs="*", default=[], help="cuda rows to leave out (e.g. chunk at 16K)")
    p.add_argument("--layer-lengths", default="1024,2048,4096,8192", help="cpu: layer comparison lengths")
    p.add_argument("--threads", type=int, default=None, help="cpu: torch threads")
    p.add_argument("--dot-precision", default=None, help="fused kernels' tl.dot precision on cuda: tf32x3 (default), ieee, tf32")
    p.add_argument("--value-block", type=int, help="rows of a state per fused-kernel block (default: fused.VALUE_BLOCK)")
    p.add_argument("--check", action="store_true", help="cuda: also print fused vs chunk errors")
    p.add_argument("--interpret", action="store_true", help="cpu: run the cuda rows under Triton's interpreter")
    p.add_argument("--compile-for", type=int, metavar="SM", help="only compile the fused kernels for this CUDA "
                   "arch (e.g. 90), no GPU needed")
    p.add_argument("--whole-model", action="store_true", help="whole-model training throughput (train_throughput.py)")
    return p.parse_args()


args = parse_args()
sys.path.insert(0, os.path.join(HERE, ".."))
if args.interpret:
    # Before anything imports triton: the kernels bind to the interpreter when they are defined.
    # The project's interpreter setup also lets fla's autotuned kernels run.
    from hope_mega.ops.triton_cpu import enable_triton_interpreter

    enable_triton_interpreter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hope_mega.ops import titans_chunk, titans_mlp_chunk, titans_mlp_reference, titans_reference  # noqa: E402

NAMES = ["u_q", "u_k", "u_v", "u_eta", "u_alpha", "s0", "w_eta", "b_eta", "w_alpha", "b_alpha", "a_log"]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def op_inputs(B, T, H, D, dtype=torch.float32, device="cpu", seed=0, hidden=None):
    """The op's 11 inputs at the scales a trained layer sees (unit-ish u, small initial states);
    with `hidden`, MLP memories: W_1 small, W_2 ~ N(0, 1/d_h) as the model initialises it."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    us = [rand(B, T, H, D, scale=D**-0.5 * 3).to(dtype) for _ in range(5)]
    params = [
        rand(H, 6, D, D, scale=0.02) if hidden is None  # s0
        else torch.stack([rand(H, 6, D, hidden, scale=0.02), rand(H, 6, D, hidden, scale=D**-0.5)], 2),
        rand(H, D, scale=D**-0.5),  # w_eta
        torch.zeros(H, device=device),  # b_eta
        rand(H, D, scale=D**-0.5),  # w_alpha
        rand(H, scale=0.5) - 4.0,  # b_alpha
        (torch.rand(H, generator=g) * 2.7).to(device),  # a_log
    ]
    return [t.requires_grad_(True) for t in us + params]


def time_fwd_bwd(fn, leaves, device, repeats):
    """Median ms of forward and of forward + backward, and peak memory in GiB (cuda)."""

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
    g = torch.Generator().manual_seed(1)
    q, k, v = (F.normalize(torch.randn(B, T, H, D, generator=g), dim=-1).to(device, dtype) for _ in range(3))
    gate = F.logsigmoid(torch.randn(B, T, H, generator=g) + 4.0).to(device)
    beta = torch.rand(B, T, H, generator=g).to(device, dtype)
    return [t.requires_grad_(True) for t in (q, k, v, gate, beta)]


def sdpa_leaves(B, T, H, D, dtype, device):
    g = torch.Generator().manual_seed(2)
    return [torch.randn(B, H, T, D, generator=g).to(device, dtype).requires_grad_(True) for _ in range(3)]


def rel_rms(ref, other):
    """fla's test metric: RMS of the difference over RMS of the reference."""
    ref, other = ref.double(), other.double()
    return ((ref - other).square().mean().sqrt() / ref.square().mean().sqrt().clamp_min(1e-30)).item()


def check(leaves, C):
    from hope_mega.ops.titans_linear.fused import titans_fused

    def run(op):
        xs = [x.detach().clone().requires_grad_(True) for x in leaves]
        o, s = op(*xs, chunk_size=C, output_final_state=True)
        gen = torch.Generator().manual_seed(2)
        w = torch.randn(o.shape, generator=gen).to(o.device)
        ((o * w).sum() + s.square().sum()).backward()
        return o.detach(), s.detach(), [x.grad for x in xs]

    (o_a, s_a, g_a), (o_b, s_b, g_b) = run(titans_chunk), run(titans_fused)
    grads = {n: round(rel_rms(a, b), 8) for n, a, b in zip(NAMES, g_a, g_b)}
    return {"o_rel_rms": rel_rms(o_a, o_b), "final_rel_rms": rel_rms(s_a, s_b),
            "grad_rel_rms_max": max(grads.values()), "grad_rel_rms": grads}


def gpu_rows():
    from hope_mega.ops.titans_linear import fused
    from hope_mega.ops.titans_linear.fused import titans_fused

    dev = args.device
    cuda = dev == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    seq_lens = args.seq_lens or ([4096, 16384] if cuda else [64])
    heads = args.heads or ([12, 16] if cuda else [2])
    D = args.head_dim or (128 if cuda else 16)
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    repeats = args.repeats or (5 if cuda else 1)
    C, B = args.chunk_size if cuda else min(args.chunk_size, 16), args.batch
    if args.dot_precision:
        fused.DOT_PRECISION = args.dot_precision
    if args.value_block:
        fused.VALUE_BLOCK = args.value_block
    from hope_mega.ops.titans_linear.fla_chunked import titans_fla

    rows = {
        "fused": lambda *x: titans_fused(*x, chunk_size=C)[0],
        "chunk": lambda *x: titans_chunk(*x, chunk_size=C)[0],
        "fla_per_chunk": lambda *x: titans_fla(*x, chunk_size=C)[0],
    }
    print(f"# {torch.cuda.get_device_name() if cuda else 'cpu (Triton interpreter)'}, torch {torch.__version__}")
    for H in heads:
        for T in seq_lens:
            shape = dict(B=B, T=T, H=H, D=D, C=C, dtype=str(dtype).split(".")[-1], device=dev,
                         dot_precision=fused.DOT_PRECISION if cuda else "ieee", value_block=fused._value_block(D))
            leaves = op_inputs(B, T, H, D, dtype, dev)
            result = {"shape": shape}
            for name, fn in rows.items():
                if name not in args.skip:
                    result[name] = _timed(fn, leaves, dev, repeats)
            if "fla_gdn" not in args.skip:
                from fla.ops.gated_delta_rule import chunk_gated_delta_rule

                result["fla_gdn"] = _timed(lambda q, k, v, g, b: chunk_gated_delta_rule(q, k, v, g, b, scale=1.0)[0],
                                           fla_gdn_leaves(B, T, H, D, dtype, dev), dev, repeats)
            if "sdpa" not in args.skip:
                result["sdpa"] = _timed(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                        sdpa_leaves(B, T, H, D, dtype, dev), dev, repeats)
            for name in list(result):
                if isinstance(result[name], dict) and "fwd_bwd_ms" in result[name]:
                    result[name]["tokens_per_s"] = round(B * T / result[name]["fwd_bwd_ms"] * 1e3)
            for base in ("fla_gdn", "sdpa"):
                if isinstance(result.get("fused"), dict) and isinstance(result.get(base), dict):
                    result[f"fused/{base}"] = round(result["fused"]["fwd_bwd_ms"] / result[base]["fwd_bwd_ms"], 2)
            if args.check:
                result["fused_vs_chunk"] = check(leaves, C)
            print(json.dumps(result), flush=True)


def _timed(fn, leaves, dev, repeats):
    try:
        return time_fwd_bwd(fn, leaves, dev, repeats)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "out of memory"


def compile_only(sm: int):
    """Compile both fused kernels for a CUDA target without a device and report what ptxas says."""
    import contextlib
    import io
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hope_mega.ops.titans_linear import fused, fused_kernels

    if args.value_block:
        fused.VALUE_BLOCK = args.value_block
    triton.knobs.nvidia.dump_ptxas_log = True
    D = args.head_dim or 128
    C = args.chunk_size
    prec = args.dot_precision or fused.DOT_PRECISION
    consts = dict(H=16, D=D, C=C, BC=fused._block_rows(C), BV=fused._value_block(D), EPS=fused.NORM_EPS, PREC=prec)
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
        print(json.dumps({"kernel": kern.fn.__name__, "sm": sm, "D": D, "C": C, "value_block": consts["BV"],
                          "dot_precision": prec, "compile_s": round(time.perf_counter() - t0, 1),
                          "shared_bytes": compiled.metadata.shared,
                          # from ptxas' log; empty when the kernel came from Triton's cache
                          "registers": found(r"Used (\d+) registers"),
                          "spill_store_bytes": found(r"(\d+) bytes spill stores"),
                          "stack_frame_bytes": found(r"(\d+) bytes stack frame")}), flush=True)


def best_seconds(fn, inputs, repeats):
    """Best wall time of fn's forward + backward on fresh copies of `inputs`."""
    best = float("inf")
    for _ in range(repeats):
        leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
        start = time.perf_counter()
        fn(*leaves).float().square().mean().backward()
        best = min(best, time.perf_counter() - start)
    return best


def cpu_op_and_layer():
    from hope_mega.config import ModelConfig
    from hope_mega.model.attention import AttentionMixer
    from hope_mega.model.documents import Documents
    from hope_mega.model.layers import TorchLayers
    from hope_mega.model.titans import TitansMixer

    if args.threads:
        torch.set_num_threads(args.threads)
    H, D, C = (args.heads or [4])[0], args.head_dim or 64, args.chunk_size
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, H={H} d_h={D} C={C}")

    inputs = op_inputs(1, args.T, H, D)
    t_chunk = best_seconds(lambda *x: titans_chunk(*x, chunk_size=C)[0], inputs, 3)
    t_ref = best_seconds(lambda *x: titans_reference(*x, chunk_size=C)[0], inputs, 1)
    print(f"op fwd+bwd T={args.T}: reference {t_ref:.3f} s, chunk {t_chunk:.3f} s, chunk speedup {t_ref / t_chunk:.1f}x")

    d = H * D
    cfg = ModelConfig(d_model=d, n_heads=H, chunk_size=C, n_layers=1)
    torch.manual_seed(0)
    mixers = {"titans": TitansMixer(cfg, TorchLayers(), 1), "attention": AttentionMixer(cfg, TorchLayers(), 1)}
    print("layer fwd+bwd (B=1, d_model=%d):" % d)
    print(f"{'T':>6} {'titans s':>9} {'attention s':>11} {'titans/attention':>16}")
    for T in [int(t) for t in args.layer_lengths.split(",")]:
        x = torch.randn(T, 1, d)
        docs = Documents.from_tokens(torch.ones(1, T, dtype=torch.long), None)
        times = {name: best_seconds(lambda x, m=m: m(x, docs), [x], 2) for name, m in mixers.items()}
        print(f"{T:>6} {times['titans']:>9.3f} {times['attention']:>11.3f} {times['titans'] / times['attention']:>16.2f}")


def cpu_mlp_rows():
    if args.threads:
        torch.set_num_threads(args.threads)
    H, D, C = (args.heads or [4])[0], args.head_dim or 64, args.chunk_size
    h = args.memory_expansion * D
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, H={H} d_h={D} hidden={h} C={C}")

    inputs = op_inputs(1, args.T, H, D, hidden=h)
    t_chunk = best_seconds(lambda *x: titans_mlp_chunk(*x, chunk_size=C)[0], inputs, 3)
    t_ref = best_seconds(lambda *x: titans_mlp_reference(*x, chunk_size=C)[0], inputs, 1)
    print(f"mlp op fwd+bwd T={args.T}: reference {t_ref:.3f} s, chunk {t_chunk:.3f} s, chunk speedup {t_ref / t_chunk:.1f}x")
    print("op fwd+bwd (B=1), MLP memories vs matrix memories, both chunk-wise torch:")
    print(f"{'T':>6} {'mlp s':>9} {'linear s':>9} {'mlp/linear':>10}")
    for T in [int(t) for t in args.layer_lengths.split(",")]:
        t_mlp = best_seconds(lambda *x: titans_mlp_chunk(*x, chunk_size=C)[0], op_inputs(1, T, H, D, hidden=h), 2)
        t_lin = best_seconds(lambda *x: titans_chunk(*x, chunk_size=C)[0], op_inputs(1, T, H, D), 2)
        print(f"{T:>6} {t_mlp:>9.3f} {t_lin:>9.3f} {t_mlp / t_lin:>10.2f}")


def gpu_mlp_rows():
    from hope_mega.ops.titans_linear.fused import titans_fused

    if not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    H, D, C = (args.heads or [16])[0], args.head_dim or 64, args.chunk_size
    h = args.memory_expansion * D
    dtype = getattr(torch, args.dtype or "bfloat16")
    repeats = args.repeats or 5
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for T in args.seq_lens or [4096, 16384]:
        B = args.batch
        result = {"shape": dict(B=B, T=T, H=H, D=D, hidden=h, C=C, dtype=str(dtype).split(".")[-1])}
        result["mlp_chunk"] = _timed(lambda *x: titans_mlp_chunk(*x, chunk_size=C)[0],
                                     op_inputs(B, T, H, D, dtype, "cuda", hidden=h), "cuda", repeats)
        result["linear_fused"] = _timed(lambda *x: titans_fused(*x, chunk_size=C)[0],
                                        op_inputs(B, T, H, D, dtype, "cuda"), "cuda", repeats)
        for name in ("mlp_chunk", "linear_fused"):
            if isinstance(result[name], dict):
                result[name]["tokens_per_s"] = round(B * T / result[name]["fwd_bwd_ms"] * 1e3)
        print(json.dumps(result), flush=True)


def main():
    if args.compile_for:
        return compile_only(args.compile_for)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.whole_model:
        sys.path.insert(0, HERE)
        import train_throughput

        return train_throughput.main(["--device", args.device])
    if args.memory == "mlp":
        return gpu_mlp_rows() if args.device == "cuda" else cpu_mlp_rows()
    if args.device == "cuda" or args.interpret:
        return gpu_rows()
    return cpu_op_and_layer()


if __name__ == "__main__":
    main()
