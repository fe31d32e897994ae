"""Checkpoint folders of random Llama models in the layouts drope_check loads, written locally.

A RoPE model saved as a plain Llama checkpoint, and a DroPE checkpoint of the same weights in SakanaAI's
published layout: ``config.json`` with ``model_type: llama_drope``, ``architectures`` / ``auto_map``
pointing at remote code, ``attention_type`` (``qk_norm_nope``: RMSNorms over the whole q/k projections)
and optionally ``softmax_scale``; weights as sharded safetensors with ``model.safetensors.index.json``
(the model's own shards plus a shard of the q/k norm weights); a tokenizer. The native loader
(:func:`drope_check.models.loading.load_model`) reads it without running remote code.

Used where no hub is reachable but the real loading path must run: ``benchmarks/gpu_smoke.py``
(7B-shaped, on a GPU) and the device-map tests (tiny, on CPU). Random weights: what is measured on them
is a check of the machinery, never a claim about a model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["write_pair_checkpoints", "write_shard_index", "write_tokenizer"]


def write_tokenizer(folder: Path, vocab: int) -> None:
    """A word-level tokenizer of ``vocab`` tokens (``<unk>``, ``<s>``, ``</s>``, then ``t3`` ...) into ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", *[f"t{i}" for i in range(3, vocab)]]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)


def write_shard_index(folder: Path) -> None:
    """``model.safetensors.index.json`` over every ``*.safetensors`` file of ``folder`` (HF's sharded layout)."""
    from safetensors import safe_open

    weight_map: dict[str, str] = {}
    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                weight_map[name] = f.name
        total += f.stat().st_size
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def write_pair_checkpoints(
    rope: nn.Module,
    root: Path,
    *,
    attention_type: str = "qk_norm_nope",
    softmax_scale: float | None = None,
    layer_qk_norms: Mapping[int, tuple[float, float]] | None = None,
    seed: int = 3,
) -> tuple[Path, Path]:
    """``root/rope`` (``rope`` saved as a plain Llama checkpoint) and ``root/drope`` (the same weights in
    SakanaAI's DroPE layout plus random q/k norm weights in [0.75, 1.25]); returns both folders.

    ``layer_qk_norms`` maps a layer to target per-head (q, k) norms: that layer's norm weights are set so the
    RMSNorm outputs have about those norms per head (an RMSNorm output has rms 1 per channel, so a head's
    norm is ~ sqrt(head_dim) x weight), e.g. ``{1: (6.6e3, 5.5e3)}`` for DroPE Llama-2-7B's layer 1.
    ``softmax_scale`` goes into the DroPE config (replacing ``head_dim ** -0.5``, as SakanaAI's code reads it).
    """
    from safetensors.torch import save_file

    config = rope.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope_dir, drope_dir = root / "rope", root / "drope"
    rope.save_pretrained(rope_dir, safe_serialization=True)
    write_tokenizer(rope_dir, config.vocab_size)
    drope_dir.mkdir(parents=True)
    for f in rope_dir.glob("*.safetensors"):
        # a lone model.safetensors would shadow the index transformers needs to find the norm shard
        name = "model-base.safetensors" if f.name == "model.safetensors" else f.name
        os.link(f, drope_dir / name) if hasattr(os, "link") else shutil.copy(f, drope_dir / name)
    write_tokenizer(drope_dir, config.vocab_size)
    dtype = next(rope.parameters()).dtype
    norms: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(seed)
    q_dim, k_dim = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    for layer in range(config.num_hidden_layers):
        q = torch.rand(q_dim, generator=g) * 0.5 + 0.75
        k = torch.rand(k_dim, generator=g) * 0.5 + 0.75
        if layer_qk_norms and layer in layer_qk_norms:
            q_norm, k_norm = layer_qk_norms[layer]
            q = torch.full((q_dim,), q_norm / math.sqrt(head_dim))
            k = torch.full((k_dim,), k_norm / math.sqrt(head_dim))
        norms[f"model.layers.{layer}.self_attn.q_norm.weight"] = q.to(dtype)
        norms[f"model.layers.{layer}.self_attn.k_norm.weight"] = k.to(dtype)
    save_file(norms, str(drope_dir / "qk_norms.safetensors"), metadata={"format": "pt"})
    write_shard_index(drope_dir)
    cfg = json.loads((rope_dir / "config.json").read_text())
    cfg.update(
        model_type="llama_drope",
        architectures=["DropeForCausalLM"],
        attention_type=attention_type,
        auto_map={"AutoConfig": "drope.DropeConfig", "AutoModelForCausalLM": "drope.DropeForCausalLM"},
    )
    if softmax_scale is not None:
        cfg["softmax_scale"] = softmax_scale
    (drope_dir / "config.json").write_text(json.dumps(cfg, indent=1))
    return rope_dir, drope_dir
