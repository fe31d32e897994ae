"""Tiny random checkpoints under the report's real repo ids, laid out as those repos are published.

The GPU job (``.github/workflows/claims-gpu.yml``) downloads ``meta-llama/Llama-2-7b-hf`` and
``SakanaAI/Llama-2-7b-hf-DroPE`` and measures them. Its rehearsal (``tests/test_gpu_rehearsal.py``)
serves these stand-ins from a local hub (:mod:`drope_check.models.local_hub`): the same repo ids, file names,
config keys and gating, with weights small enough for a CPU (32 layers, as every claim of
``expected/llama2-7b.toml`` reads layers up to 31; hidden size 32). Their numbers mean nothing: the
rehearsal checks that every claim is evaluated, never what it finds.

What is as published (the file lists of the two hub repos):

* ``meta-llama/Llama-2-7b-hf`` (gated, ``manual``): ``config.json`` with the published keys and
  values except the sizes (``model_type: llama``, ``LlamaForCausalLM``, ``rms_norm_eps 1e-5``, no
  ``head_dim``, 32 KV heads = heads), ``generation_config.json``, two safetensors shards
  ``model-0000k-of-00002.safetensors`` with ``model.safetensors.index.json`` (written by
  ``huggingface_hub.save_torch_state_dict``, fp16 as published), pickled ``pytorch_model-*.bin``
  shards with ``pytorch_model.bin.index.json`` (here a few bytes each: they must never be
  downloaded), ``tokenizer.json`` / ``tokenizer_config.json`` (``LlamaTokenizer``, ``<s>`` = 1 as BOS,
  ``</s>`` = 2, ``<unk>`` = 0) / ``special_tokens_map.json``, ``README.md``, ``LICENSE.txt``,
  ``USE_POLICY.md``. Not reproduced: ``tokenizer.model`` (a sentencepiece model; the fast
  tokenizer here is a BPE trained on a few lines) and the responsible-use PDF.
* ``SakanaAI/Llama-2-7b-hf-DroPE`` (public): the same, with ``model_type: llama_drope``,
  ``attention_type: nope`` and an ``auto_map`` to the checkpoint's remote code module ``drope``
  (shared/notes/claims-and-provenance.md: SakanaAI's checkpoints load with ``trust_remote_code``
  through a ``drope`` module; the class names below are this stand-in's, the notes record only the
  module), plus that module as ``drope.py``: a stub that raises if imported, since the native loader
  must never run it and ``fetch`` never downloads ``*.py`` without ``--trust-remote-code``.
  ``attention_type`` is an assumption: the notes do not record which DroPE variant the 7B checkpoint
  uses (its layer-1 q/k norms of ~6.6e3 come from the raw projections either way).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from drope_check.models.tiny_models import build_llama, llama_config

__all__ = ["DROPE_REPO", "GATED_REPOS", "GRANTED_TOKEN", "ROPE_REPO", "WIKITEXT_REPO", "build_hub_root"]

#: The token the rehearsal's local hub grants access to the gated repo (any other token is an account without access).
GRANTED_TOKEN = "hf_rehearsal_granted"
ROPE_REPO = "meta-llama/Llama-2-7b-hf"
DROPE_REPO = "SakanaAI/Llama-2-7b-hf-DroPE"
WIKITEXT_REPO = "Salesforce/wikitext"
GATED_REPOS: tuple[str, ...] = (ROPE_REPO,)

LAYERS = 32
HEADS = 4
HEAD_DIM = 8
HIDDEN = HEADS * HEAD_DIM
INTERMEDIATE = 64
VOCAB = 256
#: Two shards, as published (the tiny fp16 model is ~0.7 MB).
MAX_SHARD_SIZE = "400KB"

#: Training text of the tiny tokenizer (any English prose: it only has to cover WikiText's letters).
TOKENIZER_TEXT = (
    "The game began development in 2010 , carrying over a large portion of the work done on the previous title .",
    "Robert Boulter is an English film , television and theatre actor , who had a guest role in 2000 .",
    "In 1869 the railway reached the valley and the town grew quickly around the new station .",
    "Tropical storms formed over the warm waters of the Atlantic Ocean during the late summer of that year .",
    "The album was recorded in three weeks and released to generally positive reviews from music critics .",
    "She studied mathematics and physics at the university before joining the observatory as an assistant .",
    "The cathedral was rebuilt after the fire of 1666 ; its dome remains one of the largest in the world .",
    "Species of the genus are found in rivers , lakes and wetlands across Europe , Asia and North America .",
    "Valkyria Chronicles III is a tactical role @-@ playing video game developed by Sega and Media.Vision .",
    "Quick zebras jog past vexed wizards ; jumping foxes , kites and yaks question every unusual ZIP code .",
)


def _tokenizer(folder: Path) -> None:
    """A Llama-2-style fast tokenizer (BPE on "▁"-joined words, ``<unk>`` 0, ``<s>`` 1 prepended as
    BOS, ``</s>`` 2) saved as tokenizer.json / tokenizer_config.json / special_tokens_map.json."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import LlamaTokenizer

    backend = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.train_from_iterator(
        TOKENIZER_TEXT,
        trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False),
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = LlamaTokenizer(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(str(folder))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(add_bos_token=True, add_eos_token=False, legacy=False, pad_token=None, padding_side="right")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def _config(drope: bool, vocab_size: int) -> dict[str, Any]:
    """config.json with Llama-2-7b-hf's published keys (sizes tiny); DroPE adds SakanaAI's keys."""
    cfg: dict[str, Any] = {
        "_name_or_path": DROPE_REPO if drope else ROPE_REPO,
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.31.0.dev0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if drope:
        cfg.update(
            architectures=["DroPELlamaForCausalLM"],
            model_type="llama_drope",
            attention_type="nope",
            auto_map={
                "AutoConfig": "drope.DroPELlamaConfig",
                "AutoModelForCausalLM": "drope.DroPELlamaForCausalLM",
            },
        )
    return cfg


def _weights(folder: Path, seed: int) -> None:
    from huggingface_hub import save_torch_state_dict

    model = build_llama(
        llama_config(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=INTERMEDIATE,
            layers=LAYERS,
            heads=HEADS,
            kv_heads=HEADS,
            head_dim=HEAD_DIM,
            max_positions=4096,
        ),
        seed=seed,
        attn=None,
    )
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_torch_state_dict(state, str(folder), max_shard_size=MAX_SHARD_SIZE, metadata={"format": "pt"})
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2, "the stand-in must be sharded in two, as published"
    # the pickled shards the repo also publishes: a few bytes each, never to be downloaded
    bin_map = {
        k: v.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        for k, v in index["weight_map"].items()
    }
    for shard in sorted(set(bin_map.values())):
        (folder / shard).write_bytes(b"pickled weights: drope_check must never download these\n")
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": index["metadata"], "weight_map": bin_map}, indent=2)
    )


REMOTE_CODE_STUB = '''"""Stand-in for SakanaAI's remote code module: drope_check's native loader must never import it."""
raise ImportError("the rehearsal's stand-in for SakanaAI's remote code was imported")
'''


def _repo(folder: Path, *, drope: bool, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _weights(folder, seed)
    _tokenizer(folder)
    (folder / "config.json").write_text(json.dumps(_config(drope, VOCAB), indent=2))
    generation = {
        "_from_model_config": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "temperature": 0.6,
        "max_length": 4096,
        "top_p": 0.9,
        "do_sample": True,
        "transformers_version": "4.31.0.dev0",
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    (folder / "README.md").write_text(
        f"# {folder.parent.name}/{folder.name}\n\nA tiny random stand-in (drope_check rehearsal).\n"
    )
    if drope:
        (folder / "drope.py").write_text(REMOTE_CODE_STUB)
    else:
        (folder / "LICENSE.txt").write_text("LLAMA 2 COMMUNITY LICENSE AGREEMENT (stand-in)\n")
        (folder / "USE_POLICY.md").write_text("# Llama 2 Acceptable Use Policy (stand-in)\n")


WIKITEXT_CARD = """---
language:
- en
license: cc-by-sa-3.0
configs:
- config_name: wikitext-2-raw-v1
  data_files:
  - split: test
    path: wikitext-2-raw-v1/test-*
dataset_info:
  config_name: wikitext-2-raw-v1
  features:
  - name: text
    dtype: string
  splits:
  - name: test
    num_bytes: {num_bytes}
    num_examples: {n}
---

# Salesforce/wikitext (stand-in: the test split of wikitext-2-raw-v1 only)
"""


def _wikitext_dataset(folder: Path, rows: list[str]) -> None:
    """``Salesforce/wikitext`` as the hub publishes it (a parquet file per split under the config's
    folder, configs in the card's YAML), with the test split of ``wikitext-2-raw-v1`` only: the rows
    ``datasets`` yields for it (each non-empty row with its trailing newline)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "wikitext-2-raw-v1").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"text": pa.array(rows, pa.string())}),
        folder / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet",
    )
    (folder / "README.md").write_text(
        WIKITEXT_CARD.format(n=len(rows), num_bytes=sum(len(r.encode()) for r in rows))
    )


def build_hub_root(root: Path, wikitext_rows: list[str] | None = None) -> Path:
    """Write both model repos (and, given its rows, the WikiText-2 dataset repo the GPU job loads with
    ``datasets``) and the local hub's ``hub.json`` under ``root``; returns ``root``."""
    _repo(root / ROPE_REPO, drope=False, seed=20)
    _repo(root / DROPE_REPO, drope=True, seed=21)
    manifest: dict[str, Any] = {"repos": {ROPE_REPO: {"gated": "manual"}, DROPE_REPO: {"gated": False}}}
    if wikitext_rows is not None:
        _wikitext_dataset(root / "datasets" / WIKITEXT_REPO, wikitext_rows)
        manifest["datasets"] = {WIKITEXT_REPO: {"gated": False}}
    (root / "hub.json").write_text(json.dumps(manifest, indent=2))
    return root
