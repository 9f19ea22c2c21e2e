"""Export to a Hugging Face folder: it loads without hope_mega, gives the native logits, round-trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from convert_helpers import EOS, packed_ids, tiny_config, tiny_native

from hope_mega.convert import ConversionError, export_hf, import_hf, read_hf_config
from hope_mega.convert.hf.modeling_hope import HopeForCausalLM

SCRIPT = Path(__file__).resolve().parent / "load_standalone.py"
# One Titans model and one attention model with tied embeddings (the head-less logits path).
# name: (mixer, config overrides)
MODELS = {
    "titans": ("titans", {}),
    "attention": ("attention", {"tie_embeddings": True}),
    "titans-mlp": ("titans", {"memory": "mlp"}),
}


def test_exported_folders_load_without_hope_mega_and_match_native_logits(tmp_path):
    ids = packed_ids()
    dirs, native_logits = [], []
    for name, (mixer, overrides) in MODELS.items():
        native = tiny_native(mixer, **overrides)
        with torch.no_grad():
            native_logits.append(native(ids))
            # The input really exercises packing: ignoring the EOS resets changes the logits.
            unpacked = tiny_native(mixer, eos_id=None, **overrides)(ids)
        assert (unpacked - native_logits[-1]).abs().max() > 1e-2
        dirs.append(export_hf(native.cfg, native.state_dict(), tmp_path / name, eos_id=EOS))

    torch.save(ids, tmp_path / "ids.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-I", str(SCRIPT), "ids.pt", "out.pt", *map(str, dirs)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")

    assert out["loaded"] == []  # neither hope_mega nor fla was imported
    for name, file, hf_logits, ref in zip(MODELS, out["files"], out["logits"], native_logits):
        assert "transformers_modules" in file and file.endswith("modeling_hope.py")
        diff = (hf_logits - ref).abs().max().item()
        print(f"{name}: native vs standalone HF max |logit diff| = {diff:.2e}")
        assert diff <= 1e-4, name


@pytest.mark.parametrize("name", ["titans", "attention", "titans-mlp"])
def test_native_to_hf_to_native_keeps_every_weight(tmp_path, name):
    mixer, overrides = MODELS[name]
    native = tiny_native(mixer, **overrides)
    export_hf(native.cfg, native.state_dict(), tmp_path, eos_id=EOS)
    cfg, state = import_hf(tmp_path)
    assert cfg == native.cfg
    original = native.state_dict()
    assert state.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(state[key], value), key
    saved = read_hf_config(tmp_path)
    assert (saved["eos_id"], saved["reset_at_eos"], saved["eos_token_id"]) == (EOS, True, EOS)


def test_reset_at_eos_off_matches_a_native_model_without_eos(tmp_path):
    native = tiny_native("titans", eos_id=None)
    export_hf(native.cfg, native.state_dict(), tmp_path, eos_id=EOS, reset_at_eos=False)
    hf = HopeForCausalLM.from_pretrained(tmp_path).eval()
    ids = packed_ids()
    with torch.no_grad():
        assert (hf(ids).logits - native(ids)).abs().max() <= 1e-4
    assert hf.config.eos_token_id == EOS and hf.config.reset_at_eos is False


def test_bf16_export_keeps_the_recurrence_parameters_fp32(tmp_path):
    native = tiny_native("titans")
    export_hf(native.cfg, native.state_dict(), tmp_path, dtype="bf16", eos_id=EOS)
    _, state = import_hf(tmp_path)
    assert state["blocks.0.mixer.in_proj.weight"].dtype == torch.bfloat16
    assert state["blocks.0.mixer.s0"].dtype == torch.float32
    hf = HopeForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert hf.blocks[1].mixer.a_log.dtype == torch.float32
    ids = packed_ids()
    with torch.no_grad():
        ref = native(ids)
        diff = (hf(ids).logits.float() - ref).abs().max().item()
    assert diff < 0.05 * ref.abs().max().item()  # bf16 weights: close, not equal


def test_import_refuses_another_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    with pytest.raises(ConversionError, match=r"model_type is 'llama', expected 'hope_mega'") as err:
        import_hf(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_import_names_missing_files(tmp_path):
    with pytest.raises(ConversionError, match="config.json is missing") as err:
        import_hf(tmp_path)
    assert str(tmp_path) in str(err.value)
    native = tiny_native("attention")
    export_hf(native.cfg, native.state_dict(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    missing = r"no weights, neither model\.safetensors nor model\.safetensors\.index\.json"
    with pytest.raises(ConversionError, match=missing):
        import_hf(tmp_path)


def test_export_refuses_weights_that_do_not_fit_the_config(tmp_path):
    native = tiny_native("titans")
    state = native.state_dict()
    del state["blocks.1.mixer.s0"]
    with pytest.raises(ConversionError, match=r"missing \['blocks\.1\.mixer\.s0'\]"):
        export_hf(native.cfg, state, tmp_path / "a")
    wider = tiny_config("titans", d_model=64)
    with pytest.raises(ConversionError, match=r"embed\.weight has shape \(96, 32\), the config needs \(96, 64\)"):
        export_hf(wider, native.state_dict(), tmp_path / "b")


def test_tokenizer_export_loads_with_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    from hope_mega.data.tokenizer import load_tokenizer
    from hope_mega.data.tokenizer_train import train_tokenizer

    words = "river mountain engine signal memory token layer garden window über café 東京 42 3.14".split()
    gen = torch.Generator().manual_seed(0)
    lines = [" ".join(words[i] for i in torch.randint(len(words), (12,), generator=gen)) for _ in range(300)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(lines) + "\n")
    train_tokenizer([str(tmp_path / "corpus.txt")], tmp_path / "tok", vocab_size=320, num_threads=1)
    sp = load_tokenizer(tmp_path / "tok")

    native = tiny_native("titans", vocab_size=320)
    out = export_hf(native.cfg, native.state_dict(), tmp_path / "hf", tokenizer_dir=tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert type(tok).__name__ == "TokenizersBackend"  # tokenizer.json as exported
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (sp.eos_id, sp.bos_id, sp.pad_id)
    for text in ["river engine über café", "東京 42 3.14 window\n\ngarden  token", "unseen: ßøλ"]:
        ids = tok(text)["input_ids"]
        assert ids == sp.encode(text)  # no BOS added: training rows have none
        assert tok.decode(ids) == text
    # The EOS id came from the tokenizer and drives both generation and the memory resets.
    assert read_hf_config(out)["eos_id"] == sp.eos_id
    with pytest.raises(ConversionError, match="differs from the EOS id"):
        export_hf(native.cfg, native.state_dict(), tmp_path / "hf2", tokenizer_dir=tmp_path / "tok", eos_id=5)
    with pytest.raises(ConversionError, match="has no tokenizer.model"):
        export_hf(native.cfg, native.state_dict(), tmp_path / "hf3", tokenizer_dir=tmp_path)
