"""`hope-mega convert` on real TP=2 / DP=2 ZeRO-2 training checkpoints, both directions, and its errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from eval_checkpoints import EOS, PAD, logged_val_loss, trained  # noqa: E402

from hope_mega.cli import main  # noqa: E402
from hope_mega.config import load_config  # noqa: E402
from hope_mega.convert import import_hf, read_hf_config  # noqa: E402
from hope_mega.convert.cli import load_canonical_weights, read_checkpoint  # noqa: E402
from hope_mega.convert.hf.modeling_hope import HopeForCausalLM  # noqa: E402
from hope_mega.data.loader import read_rows  # noqa: E402
from hope_mega.model.lm import HopeLM  # noqa: E402
from hope_mega.parallel.sharding import shard_tensor  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return trained(tmp_path_factory)


@pytest.fixture(scope="module")
def converted(checkpoints, tmp_path_factory):
    out = {}
    for name in ("tp2", "dp2"):
        hf = tmp_path_factory.mktemp(f"hf_{name}")
        assert main(["convert", "--checkpoint", str(checkpoints[name]), "--output", str(hf)]) == 0
        out[name] = hf
    return out


def val_rows(checkpoints) -> torch.Tensor:
    return torch.as_tensor(read_rows(str(checkpoints["data"] / "data"), "val").astype("int64"))


@pytest.mark.parametrize("name", ["tp2", "dp2"])
def test_converted_weights_reproduce_the_trainers_validation_loss_and_hf_logits(checkpoints, converted, name):
    _, _, cfg, weights = read_checkpoint(checkpoints[name])
    native = HopeLM(cfg, eos_id=EOS).eval()
    native.load_state_dict(weights)
    rows = val_rows(checkpoints)
    inputs, labels = rows[:, :-1], rows[:, 1:]
    with torch.no_grad():
        per_token = native(inputs, labels)
        native_logits = native(inputs)
        hf_logits = HopeForCausalLM.from_pretrained(converted[name]).eval()(inputs).logits
    # The trainer's evaluate(): each 1-row batch's mean loss over non-pad labels, averaged.
    mask = (labels != PAD).float()
    val = ((per_token * mask).sum(1) / mask.sum(1)).mean().item()
    logged = logged_val_loss(checkpoints[name])
    print(f"{name}: trainer val loss {logged:.7f}, converted TP=1 model {val:.7f}")
    assert abs(val - logged) <= 1e-5 * logged
    assert rows.shape[0] == 162 and (rows == EOS).any()  # the whole split, with packed documents
    diff = (hf_logits - native_logits).abs().max().item()
    print(f"{name}: native vs HF max |logit diff| {diff:.2e}")
    assert diff <= 1e-4


def test_tp_shards_are_joined_and_the_vocabulary_padding_cut(checkpoints):
    ckpt, state, cfg, weights = read_checkpoint(checkpoints["tp2"])
    assert ckpt.name == "step_00000002" and state["config"]["parallel"]["tp"] == 2
    assert cfg.vocab_size == 515 and weights["embed.weight"].shape == (515, 32)
    ranks = [torch.load(ckpt / f"mp_rank_{r:02d}_model_states.pt", weights_only=False)["module"] for r in (0, 1)]
    assert ranks[0]["embed.weight"].shape == (258, 32)  # 516 padded rows over 2 ranks
    with torch.device("meta"):
        params = dict(HopeLM(cfg).named_parameters())
    split = 0
    for name, full in weights.items():
        p = params[name]
        if not hasattr(p, "tp_dim"):
            assert all(torch.equal(r[name], full) for r in ranks), name
            continue
        split += 1
        for r, local in enumerate(ranks):
            again = shard_tensor(full, p.tp_dim, p.tp_sections, r, 2, local[name].shape[p.tp_dim])
            n = min(local[name].shape[0], cfg.vocab_size - 258 * r) if name in ("embed.weight", "head.weight") else None
            assert torch.equal(again[:n], local[name][:n]), (name, r)
    assert split >= 2 * 2 + 2  # per layer at least in_proj and out_proj, plus embed and head


def test_native_to_hf_to_native_keeps_every_weight(checkpoints, converted, tmp_path):
    _, _, cfg, weights = read_checkpoint(checkpoints["tp2"])
    hf_cfg, hf_weights = import_hf(converted["tp2"])
    assert hf_cfg == cfg and hf_weights.keys() == weights.keys()
    assert all(torch.equal(hf_weights[k], v) for k, v in weights.items())
    saved = read_hf_config(converted["tp2"])
    assert (saved["eos_id"], saved["reset_at_eos"]) == (EOS, True)
    assert (converted["tp2"] / "tokenizer.model").read_bytes() == (checkpoints["data"] / "tok" / "tokenizer.model").read_bytes()

    run_config = Path(__file__).resolve().parents[1] / "train" / "tiny.yaml"
    out = tmp_path / "init"
    assert main(["convert", "--from-hf", str(converted["tp2"]), "--output", str(out), "--config", str(run_config)]) == 0
    back = load_canonical_weights(out)
    assert back.keys() == weights.keys() and all(torch.equal(back[k], v) for k, v in weights.items())
    cfg_back = load_config(out / "config.yaml")
    assert cfg_back.model == cfg and cfg_back.train.seq_len == 32 and cfg_back.data.reset_at_eos
    info = json.loads((out / "init.json").read_text())
    assert info["model_fields_from_hf"] == ["vocab_size"]  # tiny.yaml has 512, the checkpoint 515
    assert info["num_parameters"] == sum(v.numel() for v in weights.values())
    # The other inputs load_canonical_weights takes give the same weights.
    for source in (converted["tp2"], checkpoints["tp2"]):
        again = load_canonical_weights(source)
        assert all(torch.equal(again[k], v) for k, v in weights.items()), source


def test_bf16_export(checkpoints, tmp_path):
    assert main(["convert", "--checkpoint", str(checkpoints["dp2"] / "step_00000002"), "--output", str(tmp_path),
                 "--dtype", "bf16"]) == 0
    _, state = import_hf(tmp_path)
    assert state["embed.weight"].dtype == torch.bfloat16 and state["blocks.0.mixer.a_log"].dtype == torch.float32


def run_cli(capsys, *args) -> tuple[int, str]:
    rc = main(list(args))
    err = capsys.readouterr().err.strip()
    return rc, err


def test_convert_says_which_step_and_writes_files_others_can_read(checkpoints, tmp_path, capsys):
    import os
    import stat

    old_umask = os.umask(0o022)
    try:
        assert main(["convert", "--checkpoint", str(checkpoints["tp2"]), "--output", str(tmp_path / "hf")]) == 0
        assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--output", str(tmp_path / "init")]) == 0
    finally:
        os.umask(old_umask)
    out, err = capsys.readouterr()
    step = json.loads((checkpoints["tp2"] / "step_00000002" / "trainer_state.json").read_text())["step"]
    assert step == 2
    assert f"converting {checkpoints['tp2'] / 'step_00000002'} (step 2)" in out
    assert f"wrote Hugging Face folder {tmp_path / 'hf'} from step 2" in out
    assert "[convert step_00000002] 2/2 TP rank files (100%)" in err
    # safetensors alone writes 0600; every exported file follows the umask like the rest.
    for path in (tmp_path / "hf" / "model.safetensors", tmp_path / "hf" / "config.json",
                 tmp_path / "init" / "model.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_bad_inputs_are_one_line_errors(checkpoints, converted, tmp_path, capsys):
    broken = tmp_path / "broken" / "step_00000002"
    shutil.copytree(checkpoints["tp2"] / "step_00000002", broken)
    (broken / "mp_rank_01_model_states.pt").unlink()
    rc, err = run_cli(capsys, "convert", "--checkpoint", str(broken), "--output", str(tmp_path / "o1"))
    assert rc == 2 and err == (f"hope-mega convert: error: checkpoint {broken}: TP shard file(s) "
                               f"mp_rank_01_model_states.pt missing (it was written with parallel.tp=2)")
    # Given the save_dir, the only checkpoint is unusable, and the manifest says why.
    rc, err = run_cli(capsys, "convert", "--checkpoint", str(broken.parent), "--output", str(tmp_path / "o2"))
    assert rc == 2 and err.endswith(f"{broken.parent}: no usable checkpoint (step_00000002: missing file "
                                    f"mp_rank_01_model_states.pt)")

    rc, err = run_cli(capsys, "convert", "--checkpoint", str(checkpoints["data"]), "--output", str(tmp_path / "o3"))
    assert rc == 2 and err.endswith(f"{checkpoints['data']} is not a checkpoint: it has no trainer_state.json "
                                    f"and no step_* folders")

    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    rc, err = run_cli(capsys, "convert", "--from-hf", str(llama), "--output", str(tmp_path / "o4"))
    assert rc == 2 and err.endswith(f"{llama}: model_type is 'llama', expected 'hope_mega' (not a hope-mega export)")

    rc, err = run_cli(capsys, "convert", "--from-hf", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o5"))
    assert rc == 2 and err.endswith("nowhere is not a Hugging Face model folder: config.json is missing")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))

    # The installed command: exit status 2 and the one line, no traceback.
    proc = subprocess.run([sys.executable, "-m", "hope_mega.cli", "convert", "--checkpoint", str(broken),
                           "--output", str(tmp_path / "o6")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("mp_rank_01_model_states.pt missing (it was written with parallel.tp=2)")
    assert "Traceback" not in proc.stderr
