"""titans_fla (fla's chunked gated delta rule per chunk) == titans_chunk, run under Triton's
interpreter on CPU.

The interpreter must be switched on before triton is imported, and other tests in this process
import fla (hence triton) normally, so the comparison runs in a fresh interpreter: this file run as
a script prints the error figures as JSON, and the test asserts on them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NAMES = ["u_q", "u_k", "u_v", "u_eta", "u_alpha", "s0", "w_eta", "b_eta", "w_alpha", "b_alpha", "a_log"]

# (name, B, T, H, D, C, cu_seqlens). "rows": T not a multiple of C, and C longer than fla's own
# 64-token chunks, so one self-modification chunk spans two of them. "packed": five documents of
# odd lengths in two rows (one of length 1, one a whole row), so the steps run 5, 2, 1, 1 sequences
# with last chunks of 13, 8, 12, 1 and 2 tokens.
CASES = [
    ("rows", 2, 100, 2, 16, 72, None),
    ("packed", 2, 50, 2, 16, 16, [0, 13, 37, 49, 50, 100]),
]


def _compare() -> dict:
    """Outputs, final states and gradients of titans_fla vs titans_chunk for every case."""
    from hope_mega.ops.triton_cpu import enable_triton_interpreter

    enable_triton_interpreter()

    import time

    import torch
    from titans_testing import TitansInputs

    from hope_mega.ops.titans_linear.chunk import titans_chunk
    from hope_mega.ops.titans_linear.fla_chunked import titans_fla

    def run(op, leaves, chunk_size, cu_seqlens):
        o, final = op(*leaves, chunk_size=chunk_size, cu_seqlens=cu_seqlens, output_final_state=True)
        g = torch.Generator().manual_seed(1)
        w_o = torch.randn(o.shape, generator=g, dtype=o.dtype)
        w_s = torch.randn(final.shape, generator=g, dtype=final.dtype)
        ((o * w_o).sum() + (final * w_s).sum()).backward()
        return o.detach(), final.detach(), [x.grad for x in leaves]

    results = {"interpret": os.environ.get("TRITON_INTERPRET")}
    for name, B, T, H, D, C, cu in CASES:
        inp = TitansInputs(B=B, T=T, H=H, D=D, seed=T + C)
        cu = None if cu is None else torch.tensor(cu)
        start = time.perf_counter()
        o_fla, s_fla, g_fla = run(titans_fla, inp.leaves(), C, cu)
        seconds = time.perf_counter() - start
        o_chk, s_chk, g_chk = run(titans_chunk, inp.leaves(), C, cu)
        results[name] = {
            "seconds": seconds,
            "out_shape": list(o_fla.shape),
            "final_shape": list(s_fla.shape),
            "out_err": (o_fla - o_chk).abs().max().item(),
            "final_err": (s_fla - s_chk).abs().max().item(),
            "grad_rel": {n: ((a - b).norm() / b.norm()).item() for n, a, b in zip(NAMES, g_fla, g_chk)},
            "grad_norm": {n: b.norm().item() for n, b in zip(NAMES, g_chk)},
        }
    return results


@pytest.fixture(scope="module")
def figures():
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, __file__],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runs_under_the_interpreter(figures):
    assert figures["interpret"] == "1"


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_fla_equals_chunk(figures, case):
    r = figures[case]
    _, B, T, H, D, _, cu = next(c for c in CASES if c[0] == case)
    assert r["out_shape"] == [B, T, H, D]
    assert r["final_shape"] == [B if cu is None else len(cu) - 1, H, 6, D, D]
    assert r["out_err"] <= 1e-5
    assert r["final_err"] <= 1e-5
    for name in NAMES:
        # A relative error against a zero gradient would say nothing.
        assert r["grad_norm"][name] > 1e-3, f"gradient of {name} vanishes"
        assert r["grad_rel"][name] <= 1e-4, f"gradient of {name}: relative error {r['grad_rel'][name]:.2e}"


def test_interpreter_refuses_after_triton_import():
    import triton  # noqa: F401  (any earlier import, e.g. through fla, has the same effect)

    from hope_mega.ops.triton_cpu import enable_triton_interpreter

    before = os.environ.get("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="before triton is imported"):
        enable_triton_interpreter()
    assert os.environ.get("TRITON_INTERPRET") == before


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter is on in this process")
def test_cpu_without_interpreter_is_refused(titans_inputs):
    from hope_mega.ops.titans_linear.fla_chunked import titans_fla

    inp = titans_inputs(B=1, T=8, H=1, D=16)
    with pytest.raises(RuntimeError, match="enable_triton_interpreter"):
        titans_fla(*inp.us, *inp.params, chunk_size=8)


if __name__ == "__main__":
    print(json.dumps(_compare()))
