"""The Gated DeltaNet mixer (`model.mixer: gdn`) is fla's Gated DeltaNet, resets at document starts,
and trains inside HopeLM.

That our Titans op with one chunk per sequence reduces to fla's gated delta rule (spec §2, last
paragraph) is tests/ops/test_titans.py::test_one_chunk_reduces_to_fla_gated_delta_rule.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hope_mega.config import CMSLevel, ConfigError, ModelConfig, load_config
from hope_mega.model.documents import Documents
from hope_mega.model.gated_deltanet import GatedDeltaNetMixer
from hope_mega.model.layers import TorchLayers
from hope_mega.model.lm import HopeLM
from hope_mega.params import parameter_counts

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EOS = 0


def mixer_and_input(T: int, B: int, seed: int = 0, d: int = 32, H: int = 2):
    torch.manual_seed(seed)
    cfg = ModelConfig(mixer="gdn", d_model=d, n_heads=H, init_std=0.2)
    mixer = GatedDeltaNetMixer(cfg, TorchLayers(), n_layers=2)
    with torch.no_grad():  # off their initial values, so a misplaced norm weight or conv tap shows
        mixer.out_norm.add_(0.3 * torch.randn_like(mixer.out_norm))
        mixer.dt_bias.add_(torch.randn_like(mixer.dt_bias))
    return mixer, torch.randn(T, B, d)


def test_mixer_is_fla_gated_deltanet_written_out():
    """The mixer's output against the layer written out by hand from its parameters, with fla's
    token-by-token `naive_recurrent_gated_delta_rule` as the recurrence (the mixer runs fla's
    chunk form on CPU), the scale fla's layer uses (1/sqrt(d_h)). fp32; T = 100 is not a multiple
    of fla's 64-token chunks. Tolerance: 1e-5 of the output's largest entry (measured ~1e-7)."""
    from fla.ops.gated_delta_rule import naive_recurrent_gated_delta_rule

    T, B = 100, 2
    mixer, x = mixer_and_input(T, B)
    H, D = mixer.heads, mixer.head_dim
    docs = Documents.from_tokens(torch.ones(B, T, dtype=torch.long), None)
    y = mixer(x, docs)

    xb = x.transpose(0, 1)  # [B, T, d]
    q, k, v, gate = (xb @ mixer.in_proj.weight.t()).reshape(B, T, 4, H, D).unbind(2)
    beta_logit, a = (xb @ mixer.gate_proj.weight.t()).reshape(B, T, 2, H).unbind(2)

    def conv_silu(u, w):  # causal depthwise conv over time: sum_j w[..., K-1-j] u_{t-j}
        K = w.shape[-1]
        padded = F.pad(u, (0, 0, 0, 0, K - 1, 0))
        return F.silu(sum(w[..., K - 1 - j] * padded[:, K - 1 - j : K - 1 - j + T] for j in range(K)))

    def unit(u):
        return u * torch.rsqrt(u.square().sum(-1, keepdim=True) + 1e-6)

    w = mixer.conv_weight
    q, k, v = unit(conv_silu(q, w[0])), unit(conv_silu(k, w[1])), conv_silu(v, w[2])
    beta = torch.sigmoid(beta_logit)
    g = -mixer.a_log.exp() * F.softplus(a + mixer.dt_bias)
    o, _ = naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=D**-0.5)
    o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + 1e-6) * mixer.out_norm * F.silu(gate)
    expected = (o.reshape(B, T, H * D) @ mixer.out_proj.weight.t()).transpose(0, 1)

    err = ((y - expected).abs().max() / expected.abs().max()).item()
    print(f"gdn mixer vs written-out layer with fla's recurrent form: max rel err {err:.1e}")
    assert err <= 1e-5


def test_second_document_of_a_row_equals_it_alone():
    """Row 0 holds two documents (10 and 90 tokens); the second's outputs equal those of the same
    tokens alone in a row: conv window and memory restart at its first token. Without the reset
    (the same row read as one document) they differ, so the check has something to catch."""
    T, first = 100, 10
    mixer, x = mixer_and_input(T, 2, seed=1)
    ids = torch.randint(1, 50, (2, T), generator=torch.Generator().manual_seed(2))
    ids[0, first - 1] = EOS  # row 0: [10 tokens ending in EOS | 90 tokens]; row 1 one document
    packed = mixer(x, Documents.from_tokens(ids, EOS))
    alone = mixer(x[first:, :1], Documents.from_tokens(ids[:1, first:], EOS))
    unreset = mixer(x, Documents.from_tokens(ids, None))
    err = (packed[first:, :1] - alone).abs().max().item()
    gap = (unreset[first:, :1] - alone).abs().max().item()
    print(f"packed vs alone: max |diff| {err:.1e}; without the reset {gap:.1e}")
    assert err <= 1e-6
    assert gap > 1e-3
    # Row 1 (one document) is not touched by row 0's boundary.
    assert (packed[:, 1] - unreset[:, 1]).abs().max() <= 1e-6


def test_hope_lm_with_gdn_trains_and_every_parameter_learns():
    """gdn-tiny's model (64-token vocabulary) on one repeated batch of packed rows: 10 AdamW steps at
    lr 3e-3 take the loss below a quarter of its start (measured 4.18 -> 0.50), and the first
    backward reaches every parameter, through the per-document loop of the packed rows."""
    cfg = load_config(CONFIGS / "gdn-tiny.yaml", ["model.vocab_size=64"]).model
    torch.manual_seed(0)
    model = HopeLM(cfg, eos_id=EOS)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 64, (4, 65), generator=gen)
    ids[0, 20] = ids[1, 40] = ids[2, 5] = EOS
    inputs, labels = ids[:, :-1], ids[:, 1:]
    docs = model.documents(inputs)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for step in range(10):
        loss = model(inputs, labels, docs=docs).mean()
        opt.zero_grad()
        loss.backward()
        if step == 0:
            silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
            assert silent == [], f"no gradient reaches {silent}"
        opt.step()
        losses.append(loss.item())
    print(f"gdn-tiny losses: {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.25 * losses[0]


def test_gdn_tiny_is_hope_tiny_size_and_the_mixer_is_validated():
    gdn = parameter_counts(load_config(CONFIGS / "gdn-tiny.yaml").model)["total_params"]
    hope = parameter_counts(load_config(CONFIGS / "hope-tiny.yaml").model)["total_params"]
    assert abs(gdn / hope - 1) <= 0.05, (gdn, hope)
    with pytest.raises(ConfigError, match="model.mixer: 'mamba' is not one of 'titans', 'attention', 'gdn'"):
        load_config(None, ["model.mixer=mamba"])
    # Heads split over tensor-parallel ranks like the Titans mixer's.
    cfg = ModelConfig(mixer="gdn", d_model=96, n_heads=3, cms_levels=[CMSLevel(hidden=64)])

    class ThreeWay(TorchLayers):
        tp_size = 2

    with pytest.raises(ValueError, match="3 heads cannot be split over 2 tensor-parallel ranks"):
        GatedDeltaNetMixer(cfg, ThreeWay(), 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fla's chunk kernel needs a CUDA GPU")
def test_cuda_kernel_equals_the_cpu_form_on_packed_rows():
    """On a GPU the mixer runs fla's Triton chunk kernel, packed rows as one varlen batch; against
    the CPU path (fla's naive chunk form, per document) on the same weights. Tolerance 1e-2 of the
    largest entry: Triton may run fla's fp32 dots as TF32."""
    import copy

    T, first = 100, 10
    mixer, x = mixer_and_input(T, 2, seed=4)
    ids = torch.randint(1, 50, (2, T), generator=torch.Generator().manual_seed(5))
    ids[0, first - 1] = ids[1, 70] = EOS
    docs = Documents.from_tokens(ids, EOS)
    gpu = copy.deepcopy(mixer).cuda()
    x_cpu, x_gpu = x.clone().requires_grad_(), x.cuda().requires_grad_()
    y_cpu, y_gpu = mixer(x_cpu, docs), gpu(x_gpu, docs.to("cuda"))
    w = torch.randn(y_cpu.shape)
    (y_cpu * w).sum().backward()
    (y_gpu * w.cuda()).sum().backward()

    def rel(a, b):
        return ((a.cpu() - b).abs().max() / b.abs().max()).item()

    assert rel(y_gpu, y_cpu) <= 1e-2
    assert rel(x_gpu.grad, x_cpu.grad) <= 1e-2
    for (name, p), q in zip(mixer.named_parameters(), gpu.parameters()):
        assert rel(q.grad, p.grad) <= 1e-2, name
