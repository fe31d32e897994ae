"""Tests for drope_check.models.loading: the identity rotation, native DroPE loading of a checkpoint
directory in SakanaAI's layout, and the embedded SmolLM2 pair.

The independent reference throughout is a hand-written float64 Llama forward pass
(:func:`reference_logits`) built from the raw weights: RMSNorm, projections, optional QK-norm over
the WHOLE q_proj / k_proj output, no rotary step, masked softmax(q k^T * scale) v, SwiGLU MLP.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from helpers import layer_outputs
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

import drope_check.engine.attention  # noqa: F401  (registers the "drope_check" attention function)
from drope_check.engine.architectures import IdentityRotaryEmbedding
from drope_check.engine.attention import ATTN_IMPLEMENTATION
from drope_check.models.availability import pair_available
from drope_check.models.loading import load_model
from drope_check.models.pairs import ModelLoadError, ModelSpec
from drope_check.models.qk_norm import apply_identity_rotation
from drope_check.models.tiny_models import build_llama, llama_config

# A float32 model vs the float64 reference: logits O(1) through 2 small layers, float32 rounding ~1e-6.
# (Converting the model to float64 would not tighten this: HF's LlamaRMSNorm normalises in float32
# whatever the model dtype, which leaves ~6e-7 differences.)
F32_TOL = 1e-5
# A "wrong" reference (norm left out, per-head norm, default scale, RoPE) must differ by more than this,
# or the comparison above would have no power.
DIFFERENT = 1e-3

VOCAB = ["<unk>", "<s>", "</s>", *[f"w{i}" for i in range(61)]]  # 64 entries


def tiny_config(kv_heads: int = 2, layers: int = 2) -> LlamaConfig:
    """4 heads of dim 8 over ``kv_heads``, vocab :data:`VOCAB`; initializer range 0.15, so a wrong
    scale or norm shows."""
    return llama_config(
        vocab_size=len(VOCAB),
        layers=layers,
        kv_heads=kv_heads,
        max_positions=2048,
        initializer_range=0.15,
        bos_token_id=1,
        eos_token_id=2,
    )


def tiny_llama(kv_heads: int = 2, seed: int = 0) -> LlamaForCausalLM:
    return build_llama(tiny_config(kv_heads), seed=seed)


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference_logits(
    sd: dict[str, torch.Tensor],
    config: LlamaConfig,
    ids: torch.Tensor,
    scale: float,
    q_norm: bool = False,
    k_norm: bool = False,
    per_head_norm: bool = False,
) -> torch.Tensor:
    """Float64 Llama forward WITHOUT rotary embedding for a batch [B, T] of unpadded sequences.

    ``q_norm`` / ``k_norm``: RMSNorm over the whole concatenated q_proj / k_proj output with the
    checkpoint's ``self_attn.q_norm.weight`` / ``k_norm.weight`` (``per_head_norm`` normalises each
    head's slice separately instead: a deliberately wrong variant).
    """
    w = {k: v.to(torch.float64) for k, v in sd.items()}
    eps = config.rms_norm_eps
    h, kvh, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    b, t = ids.shape
    x = w["model.embed_tokens.weight"][ids]
    causal = torch.ones(t, t, dtype=torch.bool).tril()

    def qk_norm(y, weight, heads):
        if per_head_norm:
            return rms(y.view(b, t, heads, d), weight.view(heads, d), eps).reshape(b, t, heads * d)
        return rms(y, weight, eps)

    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}."
        hid = rms(x, w[p + "input_layernorm.weight"], eps)
        q = hid @ w[p + "self_attn.q_proj.weight"].T
        k = hid @ w[p + "self_attn.k_proj.weight"].T
        v = hid @ w[p + "self_attn.v_proj.weight"].T
        if q_norm:
            q = qk_norm(q, w[p + "self_attn.q_norm.weight"], h)
        if k_norm:
            k = qk_norm(k, w[p + "self_attn.k_norm.weight"], kvh)
        q = q.view(b, t, h, d).transpose(1, 2)
        k = k.view(b, t, kvh, d).transpose(1, 2).repeat_interleave(h // kvh, dim=1)
        v = v.view(b, t, kvh, d).transpose(1, 2).repeat_interleave(h // kvh, dim=1)
        scores = (q @ k.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~causal, float("-inf"))
        attn = torch.softmax(scores, dim=-1) @ v  # [B, H, T, D]
        x = x + attn.transpose(1, 2).reshape(b, t, h * d) @ w[p + "self_attn.o_proj.weight"].T
        hid = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = torch.nn.functional.silu(hid @ w[p + "mlp.gate_proj.weight"].T)
        x = x + (gate * (hid @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"], eps)
    return x @ w["lm_head.weight"].T


def logits(model, ids, position_ids=None) -> torch.Tensor:
    # An explicit all-ones attention_mask: without one, transformers reads non-consecutive
    # position_ids as PACKED sequences and masks across the "boundaries".
    with torch.no_grad():
        return model(
            input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=position_ids, use_cache=False
        ).logits


def moved_positions(t: int) -> dict[str, torch.Tensor]:
    """Position ids a model without rotary must ignore. A uniform shift leaves RoPE's q.k unchanged
    too (it depends on i - j only, up to rounding), so stretched/gapped ids are included: those
    change a RoPE model's logits, which gives the invariance checks their power."""
    return {
        "shift+1": torch.arange(t)[None] + 1,
        "shift+1000": torch.arange(t)[None] + 1000,
        "stretched x3+5": torch.arange(t)[None] * 3 + 5,
        "gapped": torch.cat([torch.arange(t // 2), torch.arange(t - t // 2) + 500])[None],
    }


def random_ids(b: int = 2, t: int = 11, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, len(VOCAB), (b, t), generator=g)
    ids[:, 0] = 1
    return ids


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.to(torch.float64) - b.to(torch.float64)).abs().max())


# --------------------------------------------------------------------------------------------------
# identity rotation
# --------------------------------------------------------------------------------------------------


def test_identity_rotary_embedding_is_cos_one_sin_zero():
    rot = IdentityRotaryEmbedding(8)
    x = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    cos, sin = rot(x, torch.arange(5)[None] + 17)
    assert cos.shape == sin.shape == (1, 5, 8)
    assert cos.dtype == sin.dtype == torch.bfloat16
    assert bool((cos == 1).all()) and bool((sin == 0).all())


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_identity_rotation_logits_invariant_to_position_shift_and_equal_reference(kv_heads):
    model = apply_identity_rotation(tiny_llama(kv_heads))
    assert isinstance(model.model.rotary_emb, IdentityRotaryEmbedding)
    ids = random_ids()
    t = ids.shape[1]
    base = logits(model, ids)
    for name, position_ids in moved_positions(t).items():
        moved = logits(model, ids, position_ids=position_ids)
        assert torch.equal(moved, base), name  # q * 1 + rotate_half(q) * 0 == q exactly
    sd = model.state_dict()
    expected = reference_logits(sd, model.config, ids, scale=model.config.head_dim**-0.5)
    torch.testing.assert_close(base.double(), expected, atol=F32_TOL, rtol=F32_TOL)

    # the same weights WITH rotary (the RoPE model): invariant to a uniform shift (relative positions),
    # not to stretched positions, and different from the no-rotary reference
    rope = tiny_llama(kv_heads)
    rope_logits = logits(rope, ids)
    moved = moved_positions(t)
    assert max_diff(rope_logits, logits(rope, ids, position_ids=moved["shift+1000"])) < 1e-4
    assert max_diff(rope_logits, logits(rope, ids, position_ids=moved["stretched x3+5"])) > DIFFERENT
    assert max_diff(rope_logits, expected) > DIFFERENT


# --------------------------------------------------------------------------------------------------
# native DroPE loading
# --------------------------------------------------------------------------------------------------

REMOTE_CODE = '''
"""Stand-in for the checkpoint's remote code: importing it leaves a marker file."""
from pathlib import Path

Path(__file__).with_name("REMOTE_CODE_RAN").write_text("imported")
Path({marker!r}).write_text("imported")

from transformers import LlamaConfig, LlamaForCausalLM


class DropeConfig(LlamaConfig):
    model_type = "llama_drope"


class DropeForCausalLM(LlamaForCausalLM):
    config_class = DropeConfig
'''


def save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({tok: i for i, tok in enumerate(VOCAB)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.save_pretrained(folder)


def make_checkpoint(
    folder: Path,
    attention_type: str | None = "qk_norm_nope",
    softmax_scale: float | None = None,
    kv_heads: int = 2,
    weights: str = "safetensors",
    drope: bool = True,
) -> tuple[dict[str, torch.Tensor], LlamaConfig, Path]:
    """A tiny checkpoint directory laid out like SakanaAI's DroPE checkpoints.

    Returns the saved tensors, the Llama config and the marker file the fake remote code writes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config(kv_heads)
    model = build_llama(config, seed=11, attn=None)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    if attention_type not in (None, "nope"):
        for layer in range(config.num_hidden_layers):
            # random positive weights far from 1, so a norm that is not loaded (left at ones) shows
            sd[f"model.layers.{layer}.self_attn.q_norm.weight"] = torch.rand(4 * 8, generator=g) * 1.5 + 0.25
            sd[f"model.layers.{layer}.self_attn.k_norm.weight"] = (
                torch.rand(kv_heads * 8, generator=g) * 1.5 + 0.25
            )
    if weights == "safetensors":
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    cfg = config.to_dict()
    if drope:
        cfg.update(
            model_type="llama_drope",
            architectures=["DropeForCausalLM"],
            auto_map={"AutoConfig": "drope.DropeConfig", "AutoModelForCausalLM": "drope.DropeForCausalLM"},
        )
        if attention_type is not None:
            cfg["attention_type"] = attention_type
        if softmax_scale is not None:
            cfg["softmax_scale"] = softmax_scale
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    marker = folder.parent / f"{folder.name}-REMOTE_CODE_RAN"
    (folder / "drope.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    save_tokenizer(folder)
    return sd, config, marker


def load_dir(folder: Path, dtype=torch.float32):
    # Answer "no" should transformers ask whether to run the checkpoint's code (it does, see
    # test_native_drope_loading_never_asks_to_run_remote_code), so a run with `-s` never waits 15 s.
    with mock.patch.object(builtins, "input", lambda *_a, **_k: "n"):
        return load_model(
            ModelSpec("drope", str(folder), "drope"), bos_token="<s>", device="cpu", dtype=dtype
        )


def remote_code_modules() -> list[str]:
    return [
        m for m in sys.modules if m == "drope" or m.endswith(".drope") or m.startswith("transformers_modules")
    ]


VARIANTS = [
    ("qk_norm_nope", 0.2),
    ("qk_norm_nope", None),
    ("q_norm_nope", 0.5),
    ("k_norm_nope", None),
    ("nope", 0.2),
    ("nope", None),
]


@pytest.mark.parametrize("attention_type,softmax_scale", VARIANTS)
def test_native_drope_checkpoint_loads_and_matches_hand_built_reference(
    tmp_path, capfd, attention_type, softmax_scale
):
    folder = tmp_path / "drope-ckpt"
    sd, config, marker = make_checkpoint(folder, attention_type, softmax_scale)
    capfd.readouterr()
    loaded = load_dir(folder)
    model = loaded.model

    # transformers' load report never calls the QK-norm weights UNEXPECTED (they are loaded)
    err = capfd.readouterr().err
    assert "UNEXPECTED" not in err and "LOAD REPORT" not in err, err
    # provenance names every norm weight loaded, with the sha256 of its bytes as saved
    norms = {k: v for k, v in sd.items() if "q_norm" in k or "k_norm" in k}
    assert len(norms) == (0 if attention_type == "nope" else 2 * config.num_hidden_layers)
    assert loaded.provenance["qk_norm_weights"] == {
        k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in sorted(norms.items())
    }

    # loaded natively: a stock Llama (plus the norm modules) with an identity rotation, no remote code
    assert isinstance(model, LlamaForCausalLM)
    assert isinstance(model.model.rotary_emb, IdentityRotaryEmbedding)
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION
    assert loaded.provenance["loader"] == "native"
    assert loaded.provenance["attention_type"] == attention_type
    assert loaded.provenance["softmax_scale"] == softmax_scale
    assert set(loaded.provenance["weights_sha256"]) == {"model.safetensors"}
    assert loaded.bos_token_id == 1 and loaded.provenance["bos_token"] == "<s>"
    assert not marker.exists() and not (folder / "REMOTE_CODE_RAN").exists()
    assert remote_code_modules() == []

    # the checkpoint's weights were loaded, QK-norm weights included
    for name, tensor in sd.items():
        if "q_norm" in name or "k_norm" in name:
            continue
        assert torch.equal(model.state_dict()[name], tensor), name
    use_q = attention_type in ("qk_norm_nope", "q_norm_nope")
    use_k = attention_type in ("qk_norm_nope", "k_norm_nope")
    for layer, attn in enumerate(model.model.layers):
        attn = attn.self_attn
        if attention_type == "nope":
            assert not hasattr(attn, "q_norm") and not hasattr(attn, "k_norm")
            continue
        assert torch.equal(attn.q_norm.weight.detach(), sd[f"model.layers.{layer}.self_attn.q_norm.weight"])
        assert torch.equal(attn.k_norm.weight.detach(), sd[f"model.layers.{layer}.self_attn.k_norm.weight"])
        assert attn.q_norm.weight.shape == (32,) and attn.k_norm.weight.shape == (16,)

    scale = softmax_scale if softmax_scale is not None else config.head_dim**-0.5
    for attn in model.model.layers:
        assert attn.self_attn.scaling == pytest.approx(scale)

    ids = random_ids()
    t = ids.shape[1]
    got = logits(model, ids)
    for name, position_ids in moved_positions(t).items():
        assert torch.equal(logits(model, ids, position_ids=position_ids), got), name
    expected = reference_logits(sd, config, ids, scale, q_norm=use_q, k_norm=use_k)
    torch.testing.assert_close(got.double(), expected, atol=F32_TOL, rtol=F32_TOL)

    # the comparison has power: each ingredient changes the logits
    if use_q or use_k:
        assert max_diff(expected, reference_logits(sd, config, ids, scale)) > DIFFERENT  # norms left out
        per_head = reference_logits(sd, config, ids, scale, q_norm=use_q, k_norm=use_k, per_head_norm=True)
        assert max_diff(expected, per_head) > DIFFERENT  # per-head instead of whole-projection norm
    if use_q != use_k:
        both = reference_logits(sd, config, ids, scale, q_norm=True, k_norm=True)
        assert max_diff(expected, both) > DIFFERENT  # only the selected projection is normalised
    if softmax_scale is not None:
        default = reference_logits(sd, config, ids, config.head_dim**-0.5, q_norm=use_q, k_norm=use_k)
        assert max_diff(expected, default) > DIFFERENT


def test_native_drope_loading_never_asks_to_run_remote_code(tmp_path):
    folder = tmp_path / "drope-ckpt"
    _, _, marker = make_checkpoint(folder, "qk_norm_nope", 0.2)
    prompts: list[str] = []

    def answer_no(prompt: str = "", *_a, **_k) -> str:
        prompts.append(prompt)
        return "n"

    with mock.patch.object(builtins, "input", answer_no):
        loaded = load_model(
            ModelSpec("drope", str(folder), "drope"), bos_token="<s>", device="cpu", dtype=torch.float32
        )
    assert loaded.provenance["loader"] == "native"
    assert not marker.exists()
    assert prompts == [], f"transformers asked: {prompts[0][:200]!r}"


@pytest.mark.parametrize("drope", [True, False], ids=["drope-config", "plain-llama-config"])
def test_bin_only_directory_is_refused(tmp_path, drope):
    folder = tmp_path / "bin-only-ckpt"
    make_checkpoint(folder, "qk_norm_nope", weights="bin", drope=drope)
    assert not list(folder.glob("*.safetensors"))
    with pytest.raises(ModelLoadError) as info:
        load_dir(folder)
    message = str(info.value)
    assert str(folder) in message
    assert "safetensors" in message


def test_unknown_attention_type_is_named(tmp_path):
    folder = tmp_path / "odd-ckpt"
    make_checkpoint(folder, "rope_alibi_nope")
    with pytest.raises(ModelLoadError, match=r"unknown DroPE attention_type 'rope_alibi_nope'") as info:
        load_dir(folder)
    assert str(folder) in str(info.value)
    assert "qk_norm_nope" in str(info.value)  # lists the known ones


def make_qwen2_drope_checkpoint(folder: Path, attention_type: str = "qk_norm_nope") -> None:
    """A tiny checkpoint as SakanaAI's DroPEQwen2ForCausalLM saves it (custom_models/drope.py:
    model_type ``qwen2_drope``, architectures ``DroPEQwen2ForCausalLM``, Qwen2 weights with q/k/v
    biases, the QK-norm weights under the same names as the Llama variants)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    config = Qwen2Config(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(13)
    sd = {k: v.detach().clone().contiguous() for k, v in Qwen2ForCausalLM(config).state_dict().items()}
    assert any(k.endswith("self_attn.q_proj.bias") for k in sd)
    for layer in range(config.num_hidden_layers):
        sd[f"model.layers.{layer}.self_attn.q_norm.weight"] = torch.rand(32) + 0.5
        sd[f"model.layers.{layer}.self_attn.k_norm.weight"] = torch.rand(16) + 0.5
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = config.to_dict()
    cfg.update(
        model_type="qwen2_drope",
        architectures=["DroPEQwen2ForCausalLM"],
        attention_type=attention_type,
        auto_map={
            "AutoConfig": "drope.DroPEQwen2Config",
            "AutoModelForCausalLM": "drope.DroPEQwen2ForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    save_tokenizer(folder)


def test_qwen2_drope_checkpoint_is_refused_never_loaded_as_llama(tmp_path):
    folder = tmp_path / "qwen2-drope-ckpt"
    make_qwen2_drope_checkpoint(folder)
    with pytest.raises(ModelLoadError) as info:
        load_dir(folder)
    message = str(info.value)
    assert str(folder) in message and "'qwen2_drope'" in message
    assert "supported: llama_drope" in message  # the supported list
    assert "--trust-remote-code" in message


def rewrite_checkpoint(
    folder: Path, drop: tuple[str, ...] = (), add: dict[str, torch.Tensor] | None = None
) -> None:
    from safetensors.torch import load_file

    sd = load_file(str(folder / "model.safetensors"))
    for key in drop:
        del sd[key]
    sd.update(add or {})
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize(
    "attention_type,drop",
    [
        ("qk_norm_nope", ("model.layers.1.self_attn.k_norm.weight",)),
        ("qk_norm_nope", ("model.layers.0.self_attn.q_norm.weight",)),
        # q_norm_nope applies only q_norm, but SakanaAI's checkpoints carry both norms for every variant
        ("q_norm_nope", ("model.layers.0.self_attn.k_norm.weight", "model.layers.1.self_attn.k_norm.weight")),
    ],
)
def test_qk_norm_checkpoint_missing_a_norm_is_refused_naming_the_tensors(tmp_path, attention_type, drop):
    folder = tmp_path / "drope-ckpt"
    make_checkpoint(folder, attention_type)
    rewrite_checkpoint(folder, drop=drop)
    with pytest.raises(ModelLoadError) as info:
        load_dir(folder)
    message = str(info.value)
    assert str(folder) in message
    for key in drop:
        assert key in message
    assert f"{len(drop)} of the 4 QK-norm weights are missing" in message


def test_checkpoint_with_weights_a_llama_lacks_or_needs_is_refused(tmp_path):
    """A checkpoint labelled llama_drope but carrying q/k/v biases (dropped silently by a Llama), or
    lacking a weight (left random), is refused naming the tensors."""
    folder = tmp_path / "drope-ckpt"
    make_checkpoint(folder, "nope")
    rewrite_checkpoint(folder, add={"model.layers.0.self_attn.q_proj.bias": torch.ones(32)})
    with pytest.raises(ModelLoadError, match=r"1 unexpected \(model\.layers\.0\.self_attn\.q_proj\.bias\)"):
        load_dir(folder)
    make_checkpoint(folder, "nope")
    rewrite_checkpoint(folder, drop=("model.layers.1.mlp.down_proj.weight",))
    with pytest.raises(ModelLoadError, match=r"1 missing \(model\.layers\.1\.mlp\.down_proj\.weight\)"):
        load_dir(folder)


# --------------------------------------------------------------------------------------------------
# the embedded pair (real SmolLM2-135M weights, CPU)
# --------------------------------------------------------------------------------------------------

EMBEDDED_OK, EMBEDDED_WHY = pair_available("smollm2-135m")
needs_embedded = pytest.mark.skipif(not EMBEDDED_OK, reason=f"embedded pair unavailable: {EMBEDDED_WHY}")

TEXT = " The game 's battle system , the BliTZ system , is carried over directly from Valkyira Chronicles ."


@pytest.fixture(scope="module")
def embedded_rope(real_model: None):
    return load_model(
        ModelSpec("rope", "embedded", "rope"), bos_token="<|im_start|>", device="cpu", dtype=torch.float32
    )


@pytest.fixture(scope="module")
def embedded_nope(real_model: None):
    return load_model(
        ModelSpec("drope", "embedded", "nope-zeroshot"),
        bos_token="<|im_start|>",
        device="cpu",
        dtype=torch.float32,
    )


@pytest.mark.slow
@needs_embedded
def test_embedded_pair_loads_with_provenance(embedded_rope, embedded_nope):
    for loaded, variant in ((embedded_rope, "rope"), (embedded_nope, "nope-zeroshot")):
        prov = loaded.provenance
        assert loaded.spec.variant == variant
        assert len(prov["weights_sha256"]) == 64 and int(prov["weights_sha256"], 16) >= 0
        assert prov["bos_token"] == "<|im_start|>" and prov["bos_token_id"] == 1 and loaded.bos_token_id == 1
        assert loaded.model.config._attn_implementation == ATTN_IMPLEMENTATION
        assert "nope-zeroshot" in loaded.name or variant == "rope"
    assert embedded_rope.provenance["weights_sha256"] == embedded_nope.provenance["weights_sha256"]
    assert isinstance(embedded_nope.model.model.rotary_emb, IdentityRotaryEmbedding)
    assert not isinstance(embedded_rope.model.model.rotary_emb, IdentityRotaryEmbedding)
    # same weights, separate copies (the zero-shot side must not alter the RoPE model)
    assert embedded_rope.model is not embedded_nope.model
    for (name, a), (_, b) in zip(
        embedded_rope.model.named_parameters(), embedded_nope.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
        assert a.data_ptr() != b.data_ptr(), name


@pytest.mark.slow
@needs_embedded
def test_embedded_bos_stream_identical_later_positions_differ(embedded_rope, embedded_nope):
    """Position 0 attends only to itself and RoPE's rotation at position 0 is the identity, so the
    BOS row of every layer's residual cannot differ between RoPE and the identity rotation: a bitwise
    check of the identity rotation on real weights. Later positions must differ (rotary matters)."""
    tok = embedded_rope.tokenizer
    ids = torch.tensor([[embedded_rope.bos_token_id, *tok.encode(TEXT, add_special_tokens=False)]])
    assert ids.shape[1] > 16
    rope_outs = layer_outputs(embedded_rope.model, ids)
    nope_outs = layer_outputs(embedded_nope.model, ids)
    assert len(rope_outs) == len(nope_outs) == embedded_rope.model.config.num_hidden_layers
    for layer, (r, n) in enumerate(zip(rope_outs, nope_outs, strict=True)):
        assert torch.equal(r[0, 0], n[0, 0]), f"layer {layer}: BOS residual differs"
        later = float((r[0, 1:] - n[0, 1:]).norm(dim=-1).max() / r[0, 1:].norm(dim=-1).max())
        assert later > 1e-3, f"layer {layer}: later positions identical (relative difference {later:.2e})"
