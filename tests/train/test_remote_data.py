"""Datasets on an object store: prep writes to s3://, two ranks train from it through one node-local
cache, and a kill -9 mid-epoch resumes exactly as from a local folder.

S3 here is moto's S3-compatible server, started by the test on the loopback interface (127.0.0.1
only) and reached through boto3 like any S3 endpoint (`S3_ENDPOINT_URL`); it stands in for S3.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

for module, what in (("boto3", "the s3 extra (pip install 'hope-mega[s3]')"), ("moto.server", "moto's S3 server (dev extra)")):
    try:
        __import__(module)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{module} missing: {what}; CI must run these tests", pytrace=False)
        pytest.skip(f"{module} missing: {what}", allow_module_level=True)

from hope_mega import checkpoint  # noqa: E402
from hope_mega.cli import main  # noqa: E402
from hope_mega.data.loader import read_dataset_card, read_rows  # noqa: E402

from ports import free_port  # noqa: E402
from train_launch import env, kill_tree, metrics, run_train, train_command  # noqa: E402

BUCKET = "hope-data"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The loopback S3 endpoint, its credentials in the environment for this module's processes."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, "moto server did not start"
            time.sleep(0.1)
    saved = dict(os.environ)
    os.environ.update(S3_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      HOPE_MEGA_DATA_CACHE=str(tmp_path_factory.mktemp("node-cache")))
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.terminate()
        server.wait()


@pytest.fixture(scope="module")
def remote_data(s3, tiny_data, tmp_path_factory, request):
    """tiny_data's corpus prepared again, with the same options, straight to s3:// (zstd shards)."""
    work = tmp_path_factory.mktemp("prep-cwd")
    here = os.getcwd()
    os.chdir(work)  # a URL --output once made a local folder named "s3:" here
    try:
        rc = main(["prep", "--tokenizer", str(tiny_data / "tok"), "--input", str(tiny_data / "corpus.jsonl"),
                   "--output", f"s3://{BUCKET}/tiny", "--seq-len", "32", "--workers", "1", "--split-val", "0.02",
                   "--compression", "zstd", "--staging", str(work / "staging"), "--quiet"])
    finally:
        os.chdir(here)
    assert rc == 0
    assert sorted(p.name for p in work.iterdir()) == []  # the staging folder is gone after the upload
    return f"s3://{BUCKET}/tiny"


def test_prep_to_s3_writes_the_same_rows_card_last(s3, remote_data, tiny_data):
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="tiny/")["Contents"]]
    assert "tiny/dataset_card.json" in keys and "tiny/train/index.json" in keys
    assert any(k.endswith(".mds.zstd") for k in keys)
    assert not any(".prep" in k for k in keys)
    remote, local = read_dataset_card(remote_data), read_dataset_card(tiny_data / "data")
    for key in ("tokenizer_hash", "tokens_written", "splits", "documents_written", "seq_len"):
        assert remote[key] == local[key], key
    for split in ("train", "val"):
        assert np.array_equal(read_rows(remote_data, split), read_rows(str(tiny_data / "data"), split)), split
    # The node cache is named from the URL and the card: a dataset made again there is fetched again.
    from hope_mega.data.loader import _split_location

    where = _split_location(remote_data, "train", remote)
    assert where == (f"{remote_data}/train", where[1]) and _split_location(remote_data, "train") == where
    assert _split_location(remote_data, "train", {**remote, "tokens_written": 1})[1] != where[1]
    # A rerun finds the finished dataset and does nothing.
    last_modified = s3.head_object(Bucket=BUCKET, Key="tiny/dataset_card.json")["LastModified"]
    assert main(["prep", "--tokenizer", str(tiny_data / "tok"), "--input", str(tiny_data / "corpus.jsonl"),
                 "--output", remote_data, "--seq-len", "32", "--workers", "1", "--split-val", "0.02",
                 "--compression", "zstd", "--quiet"]) == 0
    assert s3.head_object(Bucket=BUCKET, Key="tiny/dataset_card.json")["LastModified"] == last_modified


def test_missing_extra_is_one_line_naming_it(tiny_data, tmp_path, monkeypatch, capsys):
    from hope_mega.config import load_config
    from hope_mega.train import PreflightError, preflight

    from train_launch import CONFIG

    monkeypatch.setitem(sys.modules, "boto3", None)  # what `import boto3` meets without the extra
    monkeypatch.chdir(tmp_path)
    assert main(["prep", "--tokenizer", str(tiny_data / "tok"), "--input", str(tiny_data / "corpus.jsonl"),
                 "--output", "s3://bucket/x", "--quiet"]) == 1
    assert capsys.readouterr().err == ("error: s3://bucket/x: s3:// needs the 's3' extra "
                                       "(pip install 'hope-mega[s3]'), which provides boto3\n")
    assert list(tmp_path.iterdir()) == []
    cfg = load_config(str(CONFIG), ["data.paths=[s3://bucket/x]", f"train.save_dir={tmp_path / 'run'}"])
    with pytest.raises(PreflightError) as err:
        preflight(cfg, 1)
    assert str(err.value) == ("data.paths[0]: s3://bucket/x: s3:// needs the 's3' extra "
                              "(pip install 'hope-mega[s3]'), which provides boto3")


def test_two_ranks_train_from_s3_and_kill_9_resumes_exactly(remote_data, tiny_data, tmp_path):
    """Local folder, uninterrupted, vs the same rows from s3:// killed mid-epoch and restarted:
    the same losses bit for bit and the same rows at every step."""
    reference = tmp_path / "local"
    run_train(2, tiny_data, reference)
    remote_run = tmp_path / "remote"
    overrides = (f"data.paths=[{remote_data}]", "train.save_every=1")
    proc = subprocess.Popen(train_command(2, tiny_data, remote_run, *overrides), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (remote_run / checkpoint.tag_for(5)).exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    kill_tree(proc.pid)
    proc.wait()
    resumed_from = int(checkpoint.list_checkpoints(remote_run)[0].name.split("_")[1])
    out = run_train(2, tiny_data, remote_run, *overrides)
    assert f"resumed from {remote_run / checkpoint.tag_for(resumed_from)} at step {resumed_from}" in out.stdout
    a, b = metrics(reference), metrics(remote_run)
    assert sorted(b) == list(range(1, 10))
    for step in range(1, 10):
        assert a[step]["data_digest"] == b[step]["data_digest"], f"step {step}: data skipped or repeated"
        assert a[step]["loss"] == b[step]["loss"], (step, a[step]["loss"], b[step]["loss"])
    # Both ranks read through one node-local cache: one dataset folder, its shards decompressed there.
    cache = Path(os.environ["HOPE_MEGA_DATA_CACHE"])
    (dataset,) = cache.iterdir()
    assert (dataset / "train" / "index.json").is_file()
    assert list((dataset / "train").rglob("*.mds"))
