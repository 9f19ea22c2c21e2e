"""The W&B path of the metrics logger, in offline mode (no key, no network): what the trainer logs
reaches the run file with its steps, and a resumed run keeps its id.

The run file (`run-<id>.wandb`) is read back here directly: LevelDB-log framing (a 7-byte file
header, then 32 KiB blocks of records, each with a 7-byte header: crc32c, length, type) around
protobuf `Record`s from wandb's own `wandb_internal_pb2`.
"""

import json
import struct
import time

import pytest

from hope_mega.metrics import MetricsLogger

wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path):
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            rec = wandb_pb.Record()
            rec.ParseFromString(pending)
            records.append(rec)
    return records


def history(run_file):
    rows = []
    for rec in read_records(run_file):
        if rec.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            rows.append(row)
    return rows


def run_files(save_dir, run_id):
    return sorted((save_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))


def test_offline_run_holds_the_logged_metrics_and_resume_keeps_the_id(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    save = tmp_path / "run"
    log = MetricsLogger(str(save), True, 0, "hope-test", "runid123", "tiny", {"model": {"d_model": 64}})
    for step in (1, 2, 3):
        log.log({"step": step, "loss": 5.0 - step, "lr": 1e-3 * step}, console=False)
    log.close()
    # No key and no WANDB_MODE: the logger chose offline mode itself.
    (first,) = run_files(save, "runid123")
    rows = history(first)
    assert [(r["_step"], r["loss"], r["lr"]) for r in rows] == [(1, 4.0, 1e-3), (2, 3.0, 2e-3), (3, 2.0, 3e-3)]

    # Resume from step 2: metrics.jsonl forgets step 3; W&B continues the same run id. W&B names an
    # offline run's folder by the second it started, so a resume within the same second would
    # share the folder; a real restart never is that fast.
    time.sleep(1.05 - time.time() % 1)
    log = MetricsLogger(str(save), True, 2, "hope-test", "runid123", "tiny")
    log.log({"step": 3, "loss": 1.5}, console=False)
    log.close()
    files = run_files(save, "runid123")
    assert len(files) == 2
    resumed = [f for f in files if f != first][0]
    assert [(r["_step"], r["loss"]) for r in history(resumed)] == [(3, 1.5)]
    steps = [json.loads(line)["step"] for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_rank_other_than_0_writes_nothing(tmp_path):
    log = MetricsLogger(str(tmp_path / "run"), False, 0, "hope-test", "x")
    log.log({"step": 1, "loss": 1.0})
    log.close()
    assert not (tmp_path / "run").exists()
