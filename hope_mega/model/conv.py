"""Causal depthwise short convolution whose window restarts at every document start."""

from __future__ import annotations

import torch

from .documents import Documents


class _DocumentCausalConv(torch.autograd.Function):
    """y_t = sum_j w[:, K-1-j] * x_{t-j} over [B, T, c], minus the taps listed as crossing.

    Written as K shifted multiply-adds along T, forward and backward: a window of 2-4 taps is a
    few passes over x, where conv1d wants channels before time (a transposing copy of x, y and
    both gradients) and its depthwise backward on CPU is several times slower than the passes.
    """

    @staticmethod
    def forward(ctx, x, weight, crossing):
        T, K = x.shape[1], weight.shape[1]
        w = weight.t().contiguous()  # [K, c]: each tap's weights contiguous, so the passes vectorise
        y = torch.mul(x, w[K - 1], out=x.new_empty(x.shape))  # contiguous, whatever x's strides
        for j in range(1, min(K, T)):
            y[:, j:].addcmul_(x[:, :-j], w[K - 1 - j])
        if crossing is not None:
            out, src, tap = crossing
            flat = x.reshape(-1, x.shape[-1])
            y.view(-1, y.shape[-1]).index_add_(0, out, flat[src] * w[tap], alpha=-1)
        ctx.crossing = crossing
        ctx.save_for_backward(x, w)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, w = ctx.saved_tensors
        T, K = x.shape[1], w.shape[0]
        grad_y = grad_y.contiguous()
        grad_x = grad_y * w[K - 1]
        grad_w = torch.zeros_like(w)
        grad_w[K - 1] = (grad_y * x).sum((0, 1))
        for j in range(1, min(K, T)):
            grad_x[:, :-j].addcmul_(grad_y[:, j:], w[K - 1 - j])
            grad_w[K - 1 - j] = (grad_y[:, j:] * x[:, :-j]).sum((0, 1))
        if ctx.crossing is not None:
            out, src, tap = ctx.crossing
            gy, xs = grad_y.view(-1, x.shape[-1])[out], x.reshape(-1, x.shape[-1])[src]
            grad_x.view(-1, x.shape[-1]).index_add_(0, src, gy * w[tap], alpha=-1)
            grad_w.index_add_(0, tap, gy * xs, alpha=-1)
        return grad_x, grad_w.t(), None


def document_causal_conv(x: torch.Tensor, weight: torch.Tensor, docs: Documents) -> torch.Tensor:
    """y_t = sum_j weight[..., K-1-j] * x_{t-j}, over the taps j that stay inside the document.

    x [B, T, *channels], weight [*channels, K]. One causal conv per row, then the few taps that
    reach back into the previous document (from the first K-1 tokens of a document that does not
    start its row) are taken back out: a handful of rows, where masking every tap at every
    position would cost a full pass over x per tap.
    """
    B, T = x.shape[:2]
    K = weight.shape[-1]
    y = _DocumentCausalConv.apply(x.reshape(B, T, -1), weight.reshape(-1, K), docs.conv_crossings(K))
    return y.view(x.shape)
