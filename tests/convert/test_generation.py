"""Generation with the recurrent cache: chunk-wise prefill + token steps == one full forward."""

from __future__ import annotations

import pytest
import torch
from convert_helpers import EOS, packed_ids, tiny_native

from hope_mega.convert import export_hf
from hope_mega.convert.hf.modeling_hope import HopeCache, HopeForCausalLM

PROMPT = 7  # not a multiple of chunk_size 4; the steps then cross chunk boundaries at 8, 12, ...


# name: (mixer, Titans memory)
MODELS = {"titans": ("titans", "linear"), "attention": ("attention", "linear"), "titans-mlp": ("titans", "mlp")}


@pytest.fixture(scope="module", params=list(MODELS))
def models(request, tmp_path_factory):
    mixer, memory = MODELS[request.param]
    native = tiny_native(mixer, memory=memory)
    out = export_hf(native.cfg, native.state_dict(), tmp_path_factory.mktemp(request.param), eos_id=EOS)
    return native, HopeForCausalLM.from_pretrained(out).eval()


def decode_inputs() -> torch.Tensor:
    ids = packed_ids(seed=1)[:, :24]
    ids[0, :] = torch.where(ids[0] == EOS, ids[0] + 1, ids[0])
    ids[0, [3, 15]] = EOS  # an EOS in the prompt and one among the decoded tokens
    ids[1, :] = torch.where(ids[1] == EOS, ids[1] + 1, ids[1])
    ids[1, PROMPT - 1] = EOS  # the prompt ends with EOS: the first decoded token starts a document
    return ids


@torch.no_grad()
@pytest.mark.parametrize("prompt", [PROMPT, PROMPT + 1])
def test_prefill_then_token_steps_equal_one_full_forward(models, prompt):
    # prompt 7: row 1's prompt ends with EOS; prompt 8: row 0's last prompt document is exactly
    # one chunk long, so the first step opens a new chunk from the prefill's final states.
    native, hf = models
    ids = decode_inputs()
    full = hf(ids).logits
    assert (full - native(ids)).abs().max() <= 1e-4

    out = hf(ids[:, :prompt], use_cache=True)
    cache = out.past_key_values
    assert isinstance(cache, HopeCache) and cache.get_seq_length() == prompt
    if hf.config.mixer == "titans":
        memory = (16, 16) if hf.config.memory == "linear" else (2, 16, 32)
        assert cache.layers[0]["S"].shape == (2, 2, 6, *memory)
        assert cache.layers[0]["window"].shape == (2, 3, 3, 2, 16)
    logits = [out.logits]
    for t in range(prompt, ids.shape[1]):
        logits.append(hf(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    stepped = torch.cat(logits, 1)
    diff = (stepped - full).abs().max().item()
    print(f"{hf.config.mixer}: full forward vs prefill {prompt} + {ids.shape[1] - prompt} steps, max |diff| = {diff:.2e}")
    assert diff <= 1e-4

    # Several new tokens in one call continue from the cache too.
    cache = hf(ids[:, :prompt], use_cache=True).past_key_values
    rest = hf(ids[:, prompt:], past_key_values=cache, use_cache=True).logits
    assert (rest - full[:, prompt:]).abs().max() <= 1e-4


@torch.no_grad()
def test_generate_equals_greedy_decoding_by_full_forwards(models):
    _, hf = models
    prompt, new = decode_inputs()[:, :9], 10
    lengths = []
    hook = hf.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        generated = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, do_sample=False)
    finally:
        hook.remove()
    assert lengths == [9] + [1] * (new - 1)  # the prompt once, then one token per step from the cache

    # Reference: argmax of a full forward over everything so far; a row stops at EOS (then pads).
    seq, done = prompt, torch.zeros(prompt.shape[0], dtype=torch.bool)
    pad = hf.generation_config.pad_token_id
    for _ in range(new):
        nxt = hf(seq).logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        done |= nxt == EOS
        seq = torch.cat([seq, nxt[:, None]], 1)
        if done.all():
            break
    assert torch.equal(generated, seq), (generated[:, 9:].tolist(), seq[:, 9:].tolist())


def test_padding_other_than_left_is_refused(models):
    _, hf = models
    ids = decode_inputs()[:, :8]
    for row, col in ((0, 7), (1, 3)):  # right padding, a hole
        mask = torch.ones_like(ids)
        mask[row, col] = 0
        with pytest.raises(ValueError, match="left padding only"):
            hf(ids, attention_mask=mask)
    mask = torch.ones_like(ids)
    mask[1] = 0
    with pytest.raises(ValueError, match="row of zeros only"):
        hf(ids, attention_mask=mask)


def left_padded(prompts: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = p, 1
    return ids, mask


@torch.no_grad()
def test_left_padded_batch_equals_each_prompt_alone(models):
    # Lengths 5, 9 and 13 put each row's first real token at another place in the chunk grid
    # (chunk_size 4); row 1 holds an EOS, and the padding id is the EOS id, as the export's
    # generation config has it: padding must not start, end or feed a document the prompt sees.
    _, hf = models
    source = decode_inputs()
    prompts = [source[1, 10:15], source[0, :9], source[1, 2:15]]
    ids, mask = left_padded(prompts, pad=EOS)
    logits = hf(ids, attention_mask=mask).logits
    for row, p in enumerate(prompts):
        alone = hf(p[None]).logits[0]
        assert (logits[row, -len(p):] - alone).abs().max() <= 1e-4, row

    new = 10
    batched = hf.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=EOS,
                          eos_token_id=None)
    for row, p in enumerate(prompts):
        alone = hf.generate(p[None], attention_mask=torch.ones_like(p[None]), max_new_tokens=new,
                            do_sample=False, pad_token_id=EOS, eos_token_id=None)
        assert batched[row, ids.shape[1]:].tolist() == alone[0, len(p):].tolist(), row


@torch.no_grad()
def test_beam_search_reorders_the_cache(models):
    # Beams are reordered every step; with HopeCache.reorder_cache wrong, the cached search would
    # continue from another beam's memories and part from the cache-free search.
    _, hf = models
    prompt = decode_inputs()[:, 8:17]
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=8, num_beams=3, num_return_sequences=2)
    cached = hf.generate(prompt, **kwargs)
    uncached = hf.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


@torch.no_grad()
def test_labels_give_the_mean_next_token_loss(models):
    native, hf = models
    ids = decode_inputs()
    labels = ids.clone()
    labels[:, :5] = -100  # ignored, as transformers' convention has it
    loss = hf(ids, labels=labels).loss
    per_token = native(ids[:, :-1], labels[:, 1:].clamp(min=0))
    expected = per_token[:, 4:].mean()  # targets 5.. are the labelled ones
    assert abs(loss.item() - expected.item()) <= 1e-5
