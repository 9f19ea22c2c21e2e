"""HopeConfig: the Hugging Face configuration of an exported Hope model.

This file is copied into every exported folder and imported there by transformers with
`trust_remote_code=True`, on machines that do not have hope_mega: it depends on transformers only.
Its fields mirror hope_mega.config.ModelConfig one to one, plus the two data settings the model
needs at inference: `eos_id` and `reset_at_eos` (every memory restarts after each EOS).
"""

from __future__ import annotations

from transformers import PretrainedConfig


class HopeConfig(PretrainedConfig):
    model_type = "hope_mega"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        name: str = "hope",
        mixer: str = "titans",
        vocab_size: int = 32000,
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        chunk_size: int = 64,
        memory: str = "linear",
        memory_expansion: int = 2,
        conv_size: int = 4,
        cms_levels: list | None = None,
        norm_eps: float = 1e-6,
        tie_embeddings: bool = False,
        rope_theta: float = 10000.0,
        init_std: float = 0.02,
        eos_id: int | None = None,
        reset_at_eos: bool = True,
        **kwargs,
    ):
        if mixer not in ("titans", "attention"):
            raise ValueError(f"HopeConfig.mixer: {mixer!r} is not one of 'titans', 'attention'")
        if memory not in ("linear", "mlp"):
            raise ValueError(f"HopeConfig.memory: {memory!r} is not one of 'linear', 'mlp'")
        if d_model % n_heads:
            raise ValueError(f"HopeConfig.d_model: {d_model} is not divisible by n_heads={n_heads}")
        self.name = name
        self.mixer = mixer
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.chunk_size = chunk_size
        self.memory = memory
        self.memory_expansion = memory_expansion
        self.conv_size = conv_size
        # Plain dicts {"hidden": int, "period": int}, so config.json stays plain JSON.
        levels = cms_levels if cms_levels is not None else [{"hidden": 688, "period": 1}]
        self.cms_levels = [dict(level) for level in levels]
        self.norm_eps = norm_eps
        self.tie_embeddings = tie_embeddings
        self.rope_theta = rope_theta
        self.init_std = init_std
        self.eos_id = eos_id
        self.reset_at_eos = reset_at_eos
        # The standard names transformers and evaluation harnesses look for.
        self.hidden_size = d_model
        self.num_hidden_layers = n_layers
        self.num_attention_heads = n_heads
        # Tying is the model's own business (tie_embeddings): transformers must not tie anything.
        kwargs["tie_word_embeddings"] = False
        if eos_id is not None:
            kwargs.setdefault("eos_token_id", eos_id)
        super().__init__(**kwargs)
