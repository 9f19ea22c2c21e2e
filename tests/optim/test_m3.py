"""M3 (spec §5) against a plain re-implementation written here, and Newton–Schulz's band."""

import pytest
import torch

from hope_mega.config import ConfigError, load_config
from hope_mega.optim.m3 import M3, is_m3_matrix
from hope_mega.optim.newton_schulz import newton_schulz

A, B, C = 3.4445, -4.7750, 2.0315
LR, WD, EPS = 0.01, 0.1, 1e-8
BETA1, BETA2, BETA3, ALPHA, F = 0.9, 0.95, 0.8, 0.7, 3


def plain_ns(x, steps=5):
    transpose = x.shape[0] > x.shape[1]
    y = x.T if transpose else x
    y = y / (torch.linalg.matrix_norm(y) + 1e-7)
    for _ in range(steps):
        yyt = y @ y.T
        y = A * y + B * (yyt @ y) + C * (yyt @ yyt @ y)
    return y.T if transpose else y


def plain_orth(m, sections):
    return torch.cat([plain_ns(block) for block in torch.tensor_split(m, sections, dim=0)], dim=0)


class PlainM3:
    """One matrix, Algorithm 1 with the spec's choices, as literally as possible."""

    def __init__(self, w, sections=1, period=1):
        self.w, self.sections, self.period = w.clone(), sections, period
        self.m1 = torch.zeros_like(w)
        self.v = torch.zeros_like(w)
        self.m2 = torch.zeros_like(w)
        self.o2 = torch.zeros_like(w)
        self.pending = []  # gradients of the level's steps not yet in its period sum
        self.history = []  # the level's update gradients since the last slow update
        self.t = 0

    def feed(self, g):
        self.pending.append(g)
        if len(self.pending) < self.period:
            return
        g = sum(self.pending[1:], self.pending[0].clone())
        self.pending = []
        self.t += 1
        self.m1 = BETA1 * self.m1 + (1 - BETA1) * g
        self.v = BETA2 * self.v + (1 - BETA2) * g * g
        self.history.append(g)
        if self.t % F == 0:
            self.m2 = BETA3 * self.m2 + (1 - BETA3) * sum(self.history[1:], self.history[0].clone())
            self.history = []
            self.o2 = plain_orth(self.m2, self.sections)
        v_hat = self.v / (1 - BETA2**self.t)
        self.w = self.w * (1 - LR * WD) - LR * (plain_orth(self.m1, self.sections) + ALPHA * self.o2) / (v_hat.sqrt() + EPS)


def grad(seed, shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_m3_step_equals_a_plain_reimplementation_fp64():
    # Odd shapes, a tall and a wide matrix, a fused projection of 3 sections, a CMS level of period 2.
    shapes = {"tall": ((7, 5), 1, 1), "wide": ((3, 11), 1, 1), "fused": ((9, 4), 3, 1), "cms": ((5, 6), 1, 2)}
    params, plain = {}, {}
    for i, (name, (shape, sections, period)) in enumerate(shapes.items()):
        w = grad(100 + i, shape)
        params[name] = torch.nn.Parameter(w.clone())
        params[name].tp_dim, params[name].tp_sections = 0, sections
        plain[name] = PlainM3(w, sections, period)
    groups = [
        {"params": [params["tall"], params["wide"], params["fused"]], "period": 1},
        {"params": [params["cms"]], "period": 2},
    ]
    opt = M3(groups, lr=LR, betas=(BETA1, BETA2), beta3=BETA3, alpha=ALPHA, f=F, eps=EPS, weight_decay=WD)
    for step in range(1, 8):
        for i, (name, p) in enumerate(params.items()):
            p.grad = grad(1000 * step + i, p.shape)
            plain[name].feed(p.grad.clone())
        opt.step()
        for name, p in params.items():
            torch.testing.assert_close(p.detach(), plain[name].w, rtol=0, atol=1e-12, msg=f"{name} at step {step}")
    # 7 steps: the period-1 matrices took 7 updates (slow momentum at 3 and 6), the period-2 level 3
    # (slow at 3), with the 7th gradient pending in its accumulator.
    for name, p in params.items():
        state, ref = opt.state[p], plain[name]
        assert state["step"] == ref.t == (3 if name == "cms" else 7)
        for key, value in (("exp_avg", ref.m1), ("exp_avg_sq", ref.v), ("slow_avg", ref.m2), ("slow_orth", ref.o2)):
            torch.testing.assert_close(state[key], value, rtol=0, atol=1e-12, msg=f"{name} {key}")
        assert ref.m2.abs().sum() > 0
    torch.testing.assert_close(opt.state[params["cms"]]["grad_acc"], plain["cms"].pending[0], rtol=0, atol=0)


def test_cms_level_changes_only_at_the_end_of_its_period():
    p = torch.nn.Parameter(grad(1, (4, 6)))
    opt = M3([{"params": [p], "period": 3}], lr=LR, f=2)
    for step in range(1, 10):
        before = p.detach().clone()
        p.grad = grad(step, (4, 6))
        opt.step()
        assert torch.equal(p, before) == (step % 3 != 0), step


def test_skipped_step_changes_nothing():
    p = torch.nn.Parameter(grad(1, (4, 6)))
    opt = M3([{"params": [p], "period": 2}], lr=LR, f=2)
    p.grad = grad(2, (4, 6))
    opt.step()
    before = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
    p.grad = grad(3, (4, 6))
    with opt.skipping_steps():
        opt.step()
    assert opt.param_groups[0]["steps_seen"] == 1
    for key, value in before.items():
        assert torch.equal(torch.as_tensor(opt.state[p][key]), torch.as_tensor(value)), key


def singular_values(x):
    return torch.linalg.svdvals(x.double())


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (96, 96), (5, 300)])
@pytest.mark.parametrize("kind", ["random", "condition-1e3"])
def test_newton_schulz_singular_values_lie_in_muons_band(shape, kind):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen)
    if kind == "condition-1e3":
        u, _, vh = torch.linalg.svd(x, full_matrices=False)
        s = torch.logspace(0, -3, u.shape[1])
        x = (u * s) @ vh
    x = x.float()
    out = newton_schulz(x, 5)
    assert out.dtype == torch.float32
    # NS keeps the singular vectors and maps each singular value on its own (not monotonically):
    # read the image of sigma_i as u_i^T NS(X) v_i, paired with sigma_i of X / ||X||_F.
    u, before, vh = torch.linalg.svd((x / x.norm()).double(), full_matrices=False)
    after = torch.einsum("ik,ij,kj->k", u, out.double(), vh)
    torch.testing.assert_close(after.sort().values, singular_values(out).sort().values, rtol=0, atol=1e-5)
    big = before >= 1e-2
    assert big.sum() >= min(shape) // 3
    assert after[big].min() >= 0.68 and after[big].max() <= 1.14, (after[big].min(), after[big].max())
    assert singular_values(out).max() <= 1.21
    if kind == "condition-1e3":
        assert before.max() / before.min() > 999


def test_which_parameters_are_m3_matrices():
    from hope_mega.model.lm import HopeLM

    cfg = load_config("configs/hope-tiny.yaml").model
    for mixer, expected in (("titans", {"mixer.in_proj.weight", "mixer.out_proj.weight"}),
                            ("attention", {"mixer.qkv_proj.weight", "mixer.out_proj.weight"})):  # fmt: skip
        cfg.mixer = mixer
        model = HopeLM(cfg)
        chosen = {n.split(".", 2)[2] for n, p in model.named_parameters() if is_m3_matrix(n, p)}
        assert chosen == expected | {f"cms.levels.{i}.{w}.weight" for i in range(2) for w in ("gate_up", "down")}


@pytest.mark.parametrize("override, message", [
    ("train.optimizer=sgd", "train.optimizer: 'sgd' is not one of adamw, m3"),
    ("m3.beta3=1.0", "m3.beta3: must be in [0, 1), got 1.0"),
    ("m3.f=0", "m3.f: must be > 0, got 0"),
    ("m3.ns_steps=0", "m3.ns_steps: must be > 0, got 0"),
    ("m3.lr=0", "m3.lr: must be > 0, got 0.0"),
    ("m3.alpha=-1", "m3.alpha: must be >= 0, got -1.0"),
    ("m3.beta1=x", "m3.beta1: expected a number, got 'x'"),
])  # fmt: skip
def test_m3_settings_are_validated(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("configs/hope-tiny.yaml", [override])
    assert str(err.value) == f"configs/hope-tiny.yaml: {message}"


def test_m3_settings_load():
    cfg = load_config("configs/hope-tiny.yaml", ["train.optimizer=m3", "m3.f=4", "m3.lr=2e-3"])
    assert (cfg.train.optimizer, cfg.m3.f, cfg.m3.lr) == ("m3", 4, 2e-3)
