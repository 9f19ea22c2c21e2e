import pytest
import torch


class TitansInputs:
    """Random inputs and parameters for the Titans op, in the layout every form takes."""

    def __init__(self, B, T, H, D, dtype=torch.float32, seed=0, u_scale=1.0, s0_scale=0.1):
        g = torch.Generator().manual_seed(seed)

        def rand(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

        self.us = [rand(B, T, H, D, scale=u_scale) for _ in range(5)]
        self.s0 = rand(H, 6, D, D, scale=s0_scale)
        self.w_eta = rand(H, D, scale=D**-0.5)
        self.b_eta = rand(H, scale=0.5)
        self.w_alpha = rand(H, D, scale=D**-0.5)
        self.b_alpha = rand(H, scale=0.5) - 3.0
        self.a_log = (torch.rand(H, generator=g, dtype=torch.float64) * 2.7).to(dtype)

    @property
    def params(self):
        return [self.s0, self.w_eta, self.b_eta, self.w_alpha, self.b_alpha, self.a_log]

    def leaves(self):
        return [t.clone().requires_grad_(True) for t in self.us + self.params]


@pytest.fixture
def titans_inputs():
    return TitansInputs
