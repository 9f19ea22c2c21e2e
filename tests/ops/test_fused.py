"""The fused Titans op (Triton kernels, and their algorithm in torch) equals the chunk-wise torch path.

The Triton kernels run on CPU only under TRITON_INTERPRET=1, which must be set before triton is
imported; other tests import triton normally in this process, so the interpreted comparison runs
this file as a script in a fresh interpreter and asserts on the error figures it prints as JSON.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))  # titans_testing, also when run as a script

from titans_testing import TitansInputs, run_with_grads  # noqa: E402

from hope_mega.ops.titans_linear.chunk import titans_chunk  # noqa: E402
from hope_mega.ops.titans_linear.fused import titans_fused, titans_fused_torch  # noqa: E402

NAMES = ["u_q", "u_k", "u_v", "u_eta", "u_alpha", "s0", "w_eta", "b_eta", "w_alpha", "b_alpha", "a_log"]

# (name, B, T, H, D, C, cu_seqlens, dtype, value_block): T never a multiple of C; C = 8 and 13 run
# in a padded 16-row block; the packed rows hold a document spanning a whole row and one of length
# 1; the head widths of the 760M / 1.3B models (D = 64, 128) with C = 64, 32. value_block None is
# fused.VALUE_BLOCK (so D = 64 and 128 walk the states in 2 and 4 row blocks); 16 splits the
# small heads into row blocks too.
INTERPRETED_CASES = [
    ("rows", 2, 40, 2, 16, 16, None, "float32", None),
    ("packed", 2, 30, 2, 16, 8, [0, 7, 29, 30, 60], "float32", None),
    ("packed_odd_chunk", 1, 45, 2, 32, 13, [0, 20, 21, 45], "float32", None),
    ("packed_row_blocks", 2, 30, 2, 32, 8, [0, 7, 29, 30, 60], "float32", 16),
    ("bf16_inputs", 1, 40, 2, 16, 16, None, "bfloat16", None),
    ("bf16_row_blocks", 1, 40, 2, 32, 16, None, "bfloat16", 16),
    ("head_dim_64", 1, 70, 1, 64, 64, None, "float32", None),
    ("head_dim_128", 1, 40, 1, 128, 32, None, "float32", None),
    ("head_dim_128_chunk_64", 1, 70, 1, 128, 64, None, "float32", None),
]


def errors(inp, op, chunk_size, cu_seqlens, other_chunk_size=None):
    """Max abs error of outputs and final states, relative error of every gradient, op vs chunk."""
    o_a, s_a, g_a = run_with_grads(titans_chunk, inp.leaves(), other_chunk_size or chunk_size, cu_seqlens)
    o_b, s_b, g_b = run_with_grads(op, inp.leaves(), chunk_size, cu_seqlens)
    rel = {
        n: ((a.double() - b.double()).norm() / a.double().norm().clamp_min(1e-30)).item()
        for n, a, b in zip(NAMES, g_a, g_b)
    }
    return {
        "o": (o_a - o_b).abs().max().item(),
        "final": (s_a - s_b).abs().max().item(),
        "grad_rel": rel,
    }


def rel_rms(ref, other):
    """fla's test metric: RMS of the difference over RMS of the reference."""
    ref, other = ref.double(), other.double()
    return ((ref - other).square().mean().sqrt() / ref.square().mean().sqrt().clamp_min(1e-30)).item()


def bf16_rel_rms(device, T, H, D, cu, C=64, seed=0):
    """Relative RMS errors of titans_fused against titans_chunk on the same bf16 inputs (fp32
    states and parameters), packed rows, under a fixed random projection of outputs and states."""
    inp = TitansInputs(B=cu[-1] // T, T=T, H=H, D=D, seed=seed)
    leaves = [t.to(device, torch.bfloat16) for t in inp.us] + [t.to(device) for t in inp.params]
    cu_t = torch.tensor(cu, device=device)

    def run(op):
        xs = [t.detach().clone().requires_grad_(True) for t in leaves]
        o, s = op(*xs, chunk_size=C, cu_seqlens=cu_t, output_final_state=True)
        w = torch.randn(o.shape, generator=torch.Generator().manual_seed(1)).to(device)
        ((o * w).sum() + s.square().sum()).backward()
        return o.detach(), s.detach(), [x.grad for x in xs]

    (o_a, s_a, g_a), (o_b, s_b, g_b) = run(titans_chunk), run(titans_fused)
    return {"o": rel_rms(o_a, o_b), "final": rel_rms(s_a, s_b),
            "grads": {n: rel_rms(a, b) for n, a, b in zip(NAMES, g_a, g_b)}}


def interpreted_figures():
    """Run in a fresh interpreter with TRITON_INTERPRET=1: the Triton kernels against chunk."""
    from hope_mega.ops.titans_linear import fused, titans_linear as titans

    default_block = fused.VALUE_BLOCK
    out = {}
    for name, B, T, H, D, C, cu, dtype, value_block in INTERPRETED_CASES:
        inp = TitansInputs(B=B, T=T, H=H, D=D, dtype=getattr(torch, dtype), seed=T + C)
        cu_t = torch.tensor(cu) if cu is not None else None
        fused.VALUE_BLOCK = value_block or default_block
        start = time.perf_counter()
        out[name] = errors(inp, titans_fused, C, cu_t)
        out[name]["seconds"] = time.perf_counter() - start
        out[name]["row_blocks"] = D // fused._value_block(D)
    fused.VALUE_BLOCK = default_block
    out["model"] = model_figures()
    out["bf16_rel_rms"] = bf16_rel_rms("cpu", T=100, H=1, D=32, cu=[0, 40, 41, 100, 200], C=32)
    # The dispatcher's "fused" form is this kernel.
    inp = TitansInputs(B=1, T=20, H=1, D=16)
    a, _ = titans(*inp.us, *inp.params, chunk_size=16, impl="fused")
    b, _ = titans_fused(*inp.us, *inp.params, chunk_size=16)
    out["dispatch_equal"] = bool(torch.equal(a, b))
    # Control: the same comparison against chunk at another chunk size must see a large error,
    # or the figures above could not have failed.
    inp = TitansInputs(B=1, T=40, H=1, D=16, seed=3)
    out["control"] = errors(inp, titans_fused, 16, None, other_chunk_size=8)
    return out


def model_figures():
    """A two-layer HopeLM with the fused op against the same weights with the chunk op, on packed
    rows: the loss, and every parameter's gradient, relative."""
    from hope_mega.config import CMSLevel, ModelConfig
    from hope_mega.model.lm import HopeLM

    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=2, chunk_size=16,
                      cms_levels=[CMSLevel(hidden=96, period=1)])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.vocab_size, (2, 41), generator=g)
    ids[0, 9], ids[1, 25] = 2, 2  # packed documents, EOS = 2
    results = {}
    for impl in ("chunk", "fused"):
        torch.manual_seed(0)
        model = HopeLM(cfg, eos_id=2, titans_impl=impl)
        loss = model(ids[:, :-1], ids[:, 1:]).mean()
        loss.backward()
        results[impl] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (l_a, g_a), (l_b, g_b) = results["chunk"], results["fused"]
    return {"loss_a": l_a, "loss_b": l_b,
            "grad_rel": {n: ((g_a[n] - g_b[n]).norm() / g_a[n].norm().clamp_min(1e-30)).item() for n in g_a}}


@pytest.fixture(scope="module")
def interpreted():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["wall_seconds"] = time.perf_counter() - start
    print(json.dumps(figures, indent=1))
    return figures


@pytest.mark.parametrize("case", [c[0] for c in INTERPRETED_CASES if c[-2] == "float32"])
def test_triton_kernels_equal_chunk_fp32(interpreted, case):
    f = interpreted[case]
    assert f["o"] <= 1e-5
    assert f["final"] <= 1e-5
    for name, rel in f["grad_rel"].items():
        assert rel <= 1e-4, f"gradient of {name}: relative error {rel:.2e}"


@pytest.mark.parametrize("case", [c[0] for c in INTERPRETED_CASES if c[-2] == "bfloat16"])
def test_triton_kernels_bf16_inputs(interpreted, case):
    # Both forms upcast the same bf16 inputs and run in fp32; only the gradients' final rounding to
    # bf16 may differ, by at most an ulp (2^-8) where the fp32 values straddle a rounding boundary.
    f = interpreted[case]
    assert f["o"] <= 1e-5
    assert f["final"] <= 1e-5
    for name, rel in f["grad_rel"].items():
        assert rel <= 4e-3, f"gradient of {name}: relative error {rel:.2e}"


def test_row_blocks_exercised(interpreted):
    assert {c[0]: interpreted[c[0]]["row_blocks"] for c in INTERPRETED_CASES if c[0].startswith(("head", "packed_row"))} == {
        "packed_row_blocks": 2, "head_dim_64": 2, "head_dim_128": 4, "head_dim_128_chunk_64": 4}


def test_model_with_fused_op_equals_chunk_op(interpreted):
    f = interpreted["model"]
    assert abs(f["loss_a"] - f["loss_b"]) <= 1e-6 * abs(f["loss_a"])
    assert len(f["grad_rel"]) > 10 and any("s0" in n for n in f["grad_rel"])
    for name, rel in f["grad_rel"].items():
        assert rel <= 1e-4, f"gradient of {name}: relative error {rel:.2e}"


def test_dispatch_and_control(interpreted):
    assert interpreted["dispatch_equal"]
    ctrl = interpreted["control"]
    assert ctrl["o"] > 1e-3 and min(ctrl["grad_rel"].values()) > 1e-3


@pytest.mark.parametrize("dtype,tol_o,tol_g", [(torch.float64, 1e-12, 1e-10), (torch.float32, 1e-5, 1e-4)])
@pytest.mark.parametrize(
    "B,T,H,D,C,cu",
    [(2, 40, 2, 8, 16, None), (2, 50, 3, 8, 16, [0, 13, 37, 49, 50, 100]), (1, 45, 2, 8, 8, [0, 20, 45])],
)
def test_torch_manual_backward_equals_autograd(dtype, tol_o, tol_g, B, T, H, D, C, cu):
    """The hand-derived backward the kernels implement, in torch, against autograd through chunk."""
    inp = TitansInputs(B=B, T=T, H=H, D=D, dtype=dtype, u_scale=2.0, seed=T + C)
    f = errors(inp, titans_fused_torch, C, torch.tensor(cu) if cu else None)
    assert f["o"] <= tol_o and f["final"] <= tol_o
    for name, rel in f["grad_rel"].items():
        assert rel <= tol_g, f"gradient of {name}: relative error {rel:.2e}"


def test_every_titans_config_takes_the_fused_kernel_on_gpu():
    from hope_mega.config import load_config
    from hope_mega.ops import fused_supports

    shapes = {}
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        model = load_config(path).model
        if model.mixer == "titans" and model.memory == "linear":  # MLP memories have no fused kernel
            shapes[path.stem] = (model.head_dim, model.chunk_size)
    assert shapes["hope-760m"] == shapes["hope-1.3b"] == (128, 64)
    assert [name for name, s in shapes.items() if not fused_supports(*s)] == []
    # outside what was compiled to fit an H100's shared memory: fla per chunk
    assert not fused_supports(96, 64) and not fused_supports(8, 16)
    assert not fused_supports(256, 64) and not fused_supports(128, 128)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled kernels need a CUDA GPU (CPU: the interpreted tests above)")
@pytest.mark.parametrize("D", [64, 128])
def test_compiled_kernels_equal_chunk_in_bf16_at_full_width(D):
    """On a GPU, at the models' head widths with C = 64, packed rows and T not a multiple of C:
    fla's tolerances for bf16 (relative RMS <= 5e-3 on outputs, <= 2e-2 on gradients) for the
    kernels' tf32x3 dots against the chunk path's fp32 autograd on the same bf16 inputs."""
    f = bf16_rel_rms("cuda", T=1000, H=4, D=D, cu=[0, 300, 301, 1000, 2000])
    assert f["o"] <= 5e-3 and f["final"] <= 5e-3
    for name, err in f["grads"].items():
        assert err <= 2e-2, f"gradient of {name}: relative RMS error {err:.2e}"


def test_bf16_check_runs_interpreted(interpreted):
    # The GPU test's harness on a small shape under the interpreter (numpy fp32 dots).
    f = interpreted["bf16_rel_rms"]
    assert f["o"] <= 1e-5 and f["final"] <= 1e-5 and max(f["grads"].values()) <= 1e-4


def test_fused_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inp = TitansInputs(B=1, T=8, H=1, D=16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        titans_fused(*inp.us, *inp.params, chunk_size=8)


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1"
    print(json.dumps(interpreted_figures()))
