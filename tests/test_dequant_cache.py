"""The embedded GGUF is dequantised once per machine: a safetensors copy in the user cache dir,
keyed by the GGUF's sha256 (drope_check.models.gguf_cache.dequantized_cache_path)."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import LlamaForCausalLM

from drope_check.models import checkpoints as models_checkpoints
from drope_check.models import gguf_cache as models_gguf_cache
from drope_check.models import loading as models
from drope_check.models import pairs as models_pairs
from drope_check.models.availability import pair_available
from drope_check.models.embedded import CACHE_ENV, cache_dir
from drope_check.models.gguf_cache import dequantized_cache_path
from drope_check.models.tiny_models import build_llama, llama_config

SHA = "ab" * 32


def test_cache_dir_env_override_and_xdg_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    assert (
        dequantized_cache_path(SHA)
        == tmp_path / "mine" / "dequantized" / f"{SHA}-v{models_gguf_cache.DEQUANT_CACHE_FORMAT}"
    )
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setitem(sys.modules, "platformdirs", None)  # not installed: XDG
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "drope_check"


class _Tokenizer:
    """The part of a tokenizer the cache writer uses."""

    def save_pretrained(self, folder: str) -> None:
        (__import__("pathlib").Path(folder) / "tokenizer.json").write_text("{}")


def _tiny(seed: int) -> LlamaForCausalLM:
    config = llama_config(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        layers=1,
        heads=2,
        kv_heads=1,
        initializer_range=0.02,
    )
    return build_llama(config, seed=seed, attn=None)


def test_cache_entry_is_written_whole_and_a_second_writer_keeps_the_first(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    target = dequantized_cache_path(SHA)
    first = _tiny(0)
    models_gguf_cache._write_dequantized_cache(first, _Tokenizer(), target, SHA)
    assert (target / "model.safetensors").is_file() and (target / "drope_check_cache.json").is_file()
    models_gguf_cache._write_dequantized_cache(_tiny(1), _Tokenizer(), target, SHA)  # lost the race: no error
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary folder left
    back = LlamaForCausalLM.from_pretrained(str(target), dtype=torch.float32)
    for name, tensor in first.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


EMBEDDED_OK, EMBEDDED_WHY = pair_available("smollm2-135m")


@pytest.mark.slow
@pytest.mark.skipif(not EMBEDDED_OK, reason=f"embedded pair unavailable: {EMBEDDED_WHY}")
def test_embedded_model_from_cache_is_the_dequantised_model(monkeypatch, tmp_path):
    """First load dequantises and writes the cache; the next process (here: a cleared lru_cache)
    reads it, with bit-identical weights, the same tokenizer and the GGUF's sha256 in provenance."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    models_gguf_cache.embedded_base.cache_clear()
    try:
        fresh, fresh_tok, sha, origin, incomplete = models_gguf_cache.embedded_base()
        assert incomplete is None  # every tensor of the GGUF read (SmolLM2's lm_head is tied, not missing)
        assert "dequantised from" in origin and "cached to" in origin
        assert sha == models_checkpoints.file_sha256(models_gguf_cache.embedded_gguf_path())
        models_gguf_cache.embedded_base.cache_clear()
        cached, cached_tok, sha2, origin2, incomplete2 = models_gguf_cache.embedded_base()
        assert incomplete2 is None
        assert origin2.startswith("dequantised cache") and sha2 == sha
    finally:
        models_gguf_cache.embedded_base.cache_clear()
    fresh_sd, cached_sd = fresh.state_dict(), cached.state_dict()
    assert fresh_sd.keys() == cached_sd.keys()
    for name, tensor in fresh_sd.items():
        assert torch.equal(cached_sd[name], tensor), name
    text = " Robert Boulter is an English film , television and theatre actor ."
    assert cached_tok.encode(text) == fresh_tok.encode(text)
    # the same architecture and settings (rotary, norms, tying): the same logits bit for bit
    ids = torch.tensor([fresh_tok.encode(text)])
    with torch.no_grad():
        assert torch.equal(cached(ids).logits, fresh(ids).logits)
    assert cached.config.tie_word_embeddings == fresh.config.tie_word_embeddings
    assert (cached_tok.bos_token_id, cached_tok.eos_token_id, cached_tok.pad_token_id) == (
        fresh_tok.bos_token_id,
        fresh_tok.eos_token_id,
        fresh_tok.pad_token_id,
    )
    loaded = models.load_model(
        models_pairs.PAIRS["smollm2-135m"].rope, bos_token=models_pairs.PAIRS["smollm2-135m"].bos_token
    )
    assert loaded.provenance["weights_sha256"] == sha
    models_gguf_cache.embedded_base.cache_clear()
