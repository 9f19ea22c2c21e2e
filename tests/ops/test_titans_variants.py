"""The model.titans_* ablations (ops.common.TitansVariant): the chunk form equals the reference
under each of them, each changes the layer, and the forms and exports that implement only the
spec refuse them."""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hope_mega.config import ConfigError, ModelConfig, load_config
from hope_mega.ops import titans
from hope_mega.ops.common import DEFAULT_VARIANT, MEM_ALPHA, MEM_ETA, MEM_K, MEM_MAIN, MEM_Q, MEM_V, TitansVariant
from hope_mega.ops.titans_linear.chunk import chunk_reads, titans_chunk
from hope_mega.ops.titans_linear.reference import titans_reference

from titans_testing import run_with_grads

SWITCHES = {
    "value_norm": TitansVariant(value_norm=False),
    "residual_read": TitansVariant(residual_read=False),
    "beta_max": TitansVariant(beta_max=2.0),
    "q_scale": TitansVariant(q_scale=True),
    "gate_memory": TitansVariant(gate_memory=False),
    "all": TitansVariant(value_norm=False, residual_read=False, beta_max=2.0, q_scale=True, gate_memory=False),
}
CU = torch.tensor([0, 13, 30, 41, 60])  # two rows of 30: documents of several chunks at C = 8


def inputs(titans_inputs, variant, dtype=torch.float64):
    inp = titans_inputs(B=2, T=30, H=2, D=8, dtype=dtype, seed=3)
    if not variant.residual_read:  # near the identity, as the mixer initialises it
        inp.s0 += torch.eye(8, dtype=dtype)
    return inp


def with_variant(op, variant):
    return lambda *a, **k: op(*a, **k, variant=variant)


@pytest.mark.parametrize("name", SWITCHES)
def test_chunk_equals_reference_in_fp64(titans_inputs, name):
    variant = SWITCHES[name]
    inp = inputs(titans_inputs, variant)
    o_ref, s_ref, g_ref = run_with_grads(with_variant(titans_reference, variant), inp.leaves(), 8, CU)
    o_chk, s_chk, g_chk = run_with_grads(with_variant(titans_chunk, variant), inp.leaves(), 8, CU)
    assert (o_ref - o_chk).abs().max() <= 1e-12
    assert (s_ref - s_chk).abs().max() <= 1e-12
    for a, b in zip(g_ref, g_chk):
        assert (a - b).abs().max() <= 1e-10 * max(1.0, a.abs().max().item())


@pytest.mark.parametrize("name", SWITCHES)
def test_each_switch_changes_the_layer(titans_inputs, name):
    variant = SWITCHES[name]
    inp = inputs(titans_inputs, variant)
    o_default, _ = titans_chunk(*inp.us, *inp.params, chunk_size=8, cu_seqlens=CU)
    o_variant, _ = titans_chunk(*inp.us, *inp.params, chunk_size=8, cu_seqlens=CU, variant=variant)
    assert (o_default - o_variant).abs().max() > 1e-3


def test_beta_max_two_gives_learning_rates_above_one(titans_inputs):
    inp = titans_inputs(B=1, T=32, H=2, D=8, seed=5)
    reads = [u.reshape(1, 32, 2, 8).permute(2, 0, 1, 3) for u in inp.us]  # one chunk, heads first
    beta = chunk_reads(inp.s0[:, None], *reads, *inp.params[1:], variant=TitansVariant(beta_max=2.0))[3]
    assert beta.max() > 1.0 and beta.max() < 2.0 and beta.min() > 0.0


@pytest.mark.parametrize("residual_read", [True, False])
def test_without_gate_memory_the_gates_read_u_directly(titans_inputs, residual_read):
    """beta = sigmoid(w_eta . u + b_eta) and g = -exp(A) softplus(w_alpha . u + b_alpha) whatever
    the states hold, and the memories that would feed the gates get no gradient: the switch
    leaves nothing of them in the layer's function."""
    variant = TitansVariant(gate_memory=False, residual_read=residual_read)
    inp = titans_inputs(B=1, T=32, H=2, D=8, dtype=torch.float64, seed=5)
    reads = [u.reshape(1, 32, 2, 8).permute(2, 0, 1, 3) for u in inp.us]  # one chunk, heads first
    _, _, _, beta, g = chunk_reads(inp.s0[:, None], *reads, *inp.params[1:], variant=variant)
    w_eta, b_eta, w_alpha, b_alpha, a_log = inp.params[1:]
    u_eta, u_alpha = reads[3], reads[4]
    want_beta = torch.sigmoid((u_eta * w_eta[:, None, None]).sum(-1) + b_eta[:, None, None])
    want_g = -a_log.exp()[:, None, None] * F.softplus((u_alpha * w_alpha[:, None, None]).sum(-1) + b_alpha[:, None, None])
    assert (beta - want_beta).abs().max() <= 1e-14 and (g - want_g).abs().max() <= 1e-14
    # The states are not the identity map here (random s0), so reading them would change the gates.
    spec = chunk_reads(inp.s0[:, None], *reads, *inp.params[1:])
    assert (spec[3] - beta).abs().max() > 1e-3

    leaves = inputs(titans_inputs, variant).leaves()
    o = titans_chunk(*leaves, chunk_size=8, cu_seqlens=CU, variant=variant)[0]
    (o * torch.randn(o.shape, generator=torch.Generator().manual_seed(0), dtype=o.dtype)).sum().backward()
    s0_grad = leaves[5].grad  # [H, 6, D, D]
    assert s0_grad[:, [MEM_ETA, MEM_ALPHA]].abs().max() == 0
    assert s0_grad[:, [MEM_K, MEM_V, MEM_Q, MEM_MAIN]].abs().flatten(2).amax(-1).min() > 1e-6  # every head, every other memory


@pytest.mark.parametrize("kw", [{"impl": "fused"}, {"impl": "fla"}, {"memory": "mlp"}])
def test_forms_without_the_ablations_refuse_them(titans_inputs, kw):
    inp = titans_inputs(B=1, T=16, H=2, D=8, hidden=16 if kw.get("memory") == "mlp" else None)
    with pytest.raises(ValueError, match="ablation"):
        titans(*inp.us, *inp.params, chunk_size=8, variant=TitansVariant(q_scale=True), **kw)


def test_dispatcher_runs_a_variant_in_the_chunk_form(titans_inputs):
    inp = titans_inputs(B=1, T=16, H=2, D=8)
    variant = SWITCHES["all"]
    o, _ = titans(*inp.us, *inp.params, chunk_size=8, variant=variant)
    o_chk, _ = titans_chunk(*inp.us, *inp.params, chunk_size=8, variant=variant)
    assert torch.equal(o, o_chk)
    # The default still goes through every form: MLP memories accept the default variant.
    mlp = titans_inputs(B=1, T=16, H=2, D=8, hidden=16)
    titans(*mlp.us, *mlp.params, chunk_size=8, memory="mlp", variant=DEFAULT_VARIANT)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.titans_beta_max=0"], "model.titans_beta_max: must be in (0, 2], got 0.0"),
        (["model.titans_beta_max=2.5"], "model.titans_beta_max: must be in (0, 2], got 2.5"),
        (["model.memory=mlp", "model.titans_q_scale=true"], "model.titans_q_scale: the titans_* ablations are for the matrix memories only"),
        (["model.memory=mlp", "model.titans_residual_read=false"], "model.titans_residual_read:"),
        (["model.mixer=gdn", "model.titans_beta_max=2"], "model.titans_beta_max: the titans_* ablations change the Titans mixer only, not model.mixer: gdn"),
        (["model.mixer=attention", "model.titans_value_norm=false"], "not model.mixer: attention"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_config_accepts_the_ablations():
    m = load_config(None, ["model.titans_beta_max=2", "model.titans_value_norm=false"]).model
    assert m.titans_beta_max == 2.0 and m.titans_ablations() == ["titans_value_norm", "titans_beta_max"]
    assert ModelConfig().titans_ablations() == []


def test_export_refuses_an_ablated_model(tmp_path):
    from hope_mega.convert.export import ConversionError, export_hf

    with pytest.raises(ConversionError, match="model.titans_residual_read=False"):
        export_hf(dataclasses.replace(ModelConfig(), titans_residual_read=False), {}, tmp_path / "hf")


def test_hope_lm_with_every_switch_flipped_trains():
    from hope_mega.model.lm import HopeLM
    from hope_mega.model.titans import TitansMixer

    config = Path(__file__).resolve().parents[2] / "configs" / "hope-tiny.yaml"
    cfg = load_config(config, [
        "model.vocab_size=16", "model.chunk_size=8", "model.n_layers=2", "model.titans_value_norm=false",
        "model.titans_residual_read=false", "model.titans_beta_max=2.0", "model.titans_q_scale=true",
        "model.titans_gate_memory=false",
    ])  # fmt: skip
    torch.manual_seed(0)
    model = HopeLM(cfg.model)
    mixers = [m for m in model.modules() if isinstance(m, TitansMixer)]
    assert mixers and all(torch.equal(m.s0, torch.eye(m.head_dim).expand_as(m.s0)) for m in mixers)
    ids = torch.randint(0, 16, (2, 33), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(6):
        loss = model(ids[:, :-1], ids[:, 1:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_a_frozen_initial_state_stays_at_its_initialisation_while_the_rest_trains():
    """model.titans_learned_s0=false: the optimizer the trainer builds never moves s0 (bitwise),
    while the gate parameters beside it in the mixer do move."""
    from hope_mega.model.lm import HopeLM
    from hope_mega.model.titans import TitansMixer
    from hope_mega.optim.cms_adamw import CMSAdamW, param_groups

    config = Path(__file__).resolve().parents[2] / "configs" / "hope-tiny.yaml"
    cfg = load_config(config, ["model.vocab_size=16", "model.chunk_size=8", "model.n_layers=2", "model.titans_learned_s0=false"])
    assert cfg.model.titans_ablations() == ["titans_learned_s0"]
    torch.manual_seed(0)
    model = HopeLM(cfg.model)
    mixers = [m for m in model.modules() if isinstance(m, TitansMixer)]
    before = [(m.s0.clone(), m.w_eta.clone()) for m in mixers]
    assert all(torch.equal(s0, torch.zeros_like(s0)) for s0, _ in before)
    ids = torch.randint(0, 16, (2, 33), generator=torch.Generator().manual_seed(0))
    opt = CMSAdamW(param_groups(model, 0.1), lr=3e-3, betas=(0.9, 0.95))
    for _ in range(3):
        loss = model(ids[:, :-1], ids[:, 1:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m, (s0, w_eta) in zip(mixers, before):
        assert m.s0.grad is None and torch.equal(m.s0, s0)
        assert (m.w_eta - w_eta).abs().max() > 1e-4
