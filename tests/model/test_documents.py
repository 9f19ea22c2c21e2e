"""Document layouts: computed on the host once per batch, and attention kept inside documents."""

import pytest
import torch
import torch.nn.functional as F

from hope_mega.model.attention import _varlen_attention, document_attention
from hope_mega.model.conv import document_causal_conv
from hope_mega.model.documents import Documents
from hope_mega.ops import titans_chunk

EOS = 1


def packed_ids(seed=0, B=3, T=40):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 50, (B, T), generator=g)
    ids[0, [4, 5, 20]] = EOS  # a one-token document between two EOS
    ids[1, T - 1] = EOS  # an EOS that starts nothing inside the row
    ids[2, 0] = EOS
    return ids


def test_host_layout_matches_the_token_boundaries():
    ids = packed_ids()
    docs = Documents.from_tokens(ids, EOS)
    # Row 0: documents 0..4, 5, 6..20, 21..39; row 1: one; row 2: 0, 1..39.
    assert docs.cu_seqlens_host == (0, 5, 6, 21, 40, 80, 81, 120)
    assert docs.cu_seqlens.tolist() == list(docs.cu_seqlens_host)
    assert docs.max_len == 40 and docs.position[0, 6].item() == 0 and docs.position[0, 20].item() == 14
    moved = docs.to("cpu")
    assert moved.cu_seqlens_host == docs.cu_seqlens_host and torch.equal(moved.doc_id, docs.doc_id)
    rows = Documents.from_tokens(ids, None)
    assert rows.cu_seqlens is None and rows.cu_seqlens_host is None and rows.max_len == 40


def test_titans_ops_take_the_host_offsets_as_they_take_the_tensor():
    torch.manual_seed(0)
    B, T, H, D = 2, 24, 2, 8
    us = [torch.randn(B, T, H, D, dtype=torch.float64) for _ in range(5)]
    params = [torch.zeros(H, 6, D, D, dtype=torch.float64), torch.randn(H, D, dtype=torch.float64) * 0.3,
              torch.zeros(H, dtype=torch.float64), torch.randn(H, D, dtype=torch.float64) * 0.3,
              torch.full((H,), -2.0, dtype=torch.float64), torch.zeros(H, dtype=torch.float64)]
    cu = (0, 7, 24, 30, 48)
    a, sa = titans_chunk(*us, *params, chunk_size=4, cu_seqlens=torch.tensor(cu), output_final_state=True)
    b, sb = titans_chunk(*us, *params, chunk_size=4, cu_seqlens=cu, output_final_state=True)
    assert torch.equal(a, b) and torch.equal(sa, sb)


def per_document_conv(x, weight, docs):
    """The definition: each document convolved on its own, with zeros before its first token."""
    B, T = x.shape[:2]
    K = weight.shape[-1]
    flat = x.reshape(B * T, *x.shape[2:])
    out = torch.zeros_like(flat)
    cu = docs.cu_seqlens_host
    for a, b in zip(cu, cu[1:]):
        for t in range(a, b):
            for j in range(min(K, t - a + 1)):
                out[t] += weight[..., K - 1 - j] * flat[t - j]
    return out.view_as(x)


@pytest.mark.parametrize("window", [1, 2, 4])
def test_short_conv_restarts_at_every_document(window):
    torch.manual_seed(0)
    docs = Documents.from_tokens(packed_ids(), EOS)
    x = torch.randn(3, 40, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, window, dtype=torch.float64, requires_grad=True)
    fast, ref = document_causal_conv(x, w, docs), per_document_conv(x, w, docs)
    assert (fast - ref).abs().max() <= 1e-12
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((fast * g).sum(), (x, w))
    ref_grads = torch.autograd.grad((ref * g).sum(), (x, w))
    assert all((a - b).abs().max() <= 1e-12 for a, b in zip(grads, ref_grads))
    if window > 1:  # the documents starting inside rows 0 and 2 do cross a tap
        assert docs.conv_crossings(window) is not None
    rows = Documents.from_tokens(packed_ids(), None)
    assert (document_causal_conv(x, w, rows) - per_document_conv(x, w, Documents(None, rows.position, rows.doc_id, (0, 40, 80, 120)))).abs().max() <= 1e-12


def per_document_attention(q, k, v, docs):
    """The definition: causal attention over each document on its own."""
    B, H, T, D = q.shape
    flat = [t.transpose(1, 2).reshape(B * T, H, D) for t in (q, k, v)]
    out = torch.empty_like(flat[0])
    cu = docs.cu_seqlens_host
    for a, b in zip(cu, cu[1:]):
        qd, kd, vd = (t[a:b].transpose(0, 1)[None] for t in flat)
        out[a:b] = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)[0].transpose(0, 1)
    return out.view(B, T, H, D).transpose(1, 2)


def test_document_attention_is_causal_attention_per_document():
    torch.manual_seed(0)
    docs = Documents.from_tokens(packed_ids(), EOS)
    q, k, v = (torch.randn(3, 2, 40, 16) for _ in range(3))
    assert (document_attention(q, k, v, docs) - per_document_attention(q, k, v, docs)).abs().max() <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen flash-attention path runs on a GPU only")
def test_varlen_flash_attention_on_gpu_equals_the_definition():
    assert _varlen_attention()[0] is not None, "this torch has no torch.nn.attention.varlen"
    torch.manual_seed(0)
    docs = Documents.from_tokens(packed_ids(T=256), EOS).to("cuda")
    q, k, v = (torch.randn(3, 4, 256, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fast = document_attention(q, k, v, docs)
    ref = per_document_attention(*(t.float() for t in (q, k, v)), docs)
    rel = ((fast.float() - ref).square().mean() / ref.square().mean()).sqrt().item()
    assert rel <= 1e-2, rel  # bf16 inputs: fla's relative-RMS criterion
    fast.float().square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
