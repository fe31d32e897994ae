"""No model is measured with weights it did not read, nor with weights that are not finite.

transformers loads a checkpoint that lacks a tensor with that tensor freshly initialised (it prints
"MISSING ... newly initialized") and one with extra tensors (attention biases a Llama does not
have) with them ignored ("UNEXPECTED"); its GGUF loader drops a GGUF tensor that maps to no
parameter without a word. drope_check refuses both on every loader path -- a local directory, a
hub id read through the HF cache, the embedded GGUF and its dequantised cache -- naming the model,
the file or folder and the tensors, unless ``--allow-incomplete-weights`` (pytest:
``--drope-allow-incomplete-weights``) asks to measure anyway, which the provenance and the report
then say. Tied embeddings (SmolLM2's ``lm_head``) and buffers (``rotary_emb.inv_freq``) are not
missing tensors: transformers 5.24's loading info never lists them, and the tied and untied tiny
checkpoints below load. A tensor holding a NaN is refused naming it, before any forward pass.

Every case runs on tiny checkpoints (2 layers, a 64-token vocabulary): seconds each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_models import make_checkpoint, rewrite_checkpoint, save_tokenizer, tiny_config

import drope_check
from drope_check import cli
from drope_check.models import checkpoints as models_checkpoints
from drope_check.models import gguf_cache as models_gguf_cache
from drope_check.models.embedded import CACHE_ENV
from drope_check.models.loading import load_model
from drope_check.models.pairs import ModelLoadError, ModelSpec
from drope_check.models.tiny_models import build_llama
from drope_check.report.build import build_report, pair_info
from drope_check.report.markdown import render_markdown

REPO = Path(drope_check.__file__).resolve().parent.parent
MISSING = "model.layers.1.mlp.down_proj.weight"
BIAS = "model.layers.0.self_attn.q_proj.bias"


def run(capsys, *argv: object) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_sentence(err: str, *names: str) -> None:
    """One error sentence of drope-check's on stderr, naming ``names``, and no traceback
    (transformers' own progress bars and log lines before it aside)."""
    __tracebackhide__ = True
    lines = [line for line in err.strip().splitlines() if line.startswith("drope-check")]
    assert (
        len(lines) == 1 and lines[0].startswith("drope-check measure: error: ") and "Traceback" not in err
    ), err
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"


def measure_args(rope: Path | str, drope: Path | str, out: Path, *extra: object) -> list[object]:
    return [
        "measure",
        "--rope",
        rope,
        "--drope",
        drope,
        "--out",
        out,
        "--device",
        "cpu",
        "--interventions",
        "none",
        "--n-texts",
        "2",
        "--max-tokens",
        "16",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def good_pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("good")
    make_checkpoint(root / "rope", None, drope=False)  # None: no QK-norm tensors (a plain Llama has none)
    make_checkpoint(root / "drope", "qk_norm_nope")
    return root / "rope", root / "drope"


def test_tied_and_untied_checkpoints_load_without_a_missing_tensor(tmp_path):
    """A tied checkpoint stores lm_head once (as embed_tokens); neither it nor a buffer is "missing"."""
    for tied in (True, False):
        folder = tmp_path / f"tied-{tied}"
        config = tiny_config()
        config.tie_word_embeddings = tied
        build_llama(config, seed=3, attn=None).save_pretrained(folder)
        save_tokenizer(folder)
        assert ("lm_head.weight" in load_file(str(folder / "model.safetensors"))) is not tied
        loaded = load_model(ModelSpec("rope", str(folder), "rope"), device="cpu", dtype=torch.float32)
        assert "incomplete_weights" not in loaded.provenance
        assert loaded.provenance["weights_loaded_from"] == str(folder)


@pytest.mark.parametrize("side", ["rope", "drope"])
@pytest.mark.parametrize("problem", ["missing", "unexpected"])
def test_a_checkpoint_that_does_not_match_its_model_is_refused_before_measuring(
    tmp_path, capsys, good_pair, side, problem
):
    rope, drope = good_pair
    bad = tmp_path / f"bad-{side}"
    if side == "rope":
        make_checkpoint(bad, None, drope=False)
    else:
        make_checkpoint(bad, "qk_norm_nope")
    if problem == "missing":
        rewrite_checkpoint(bad, drop=(MISSING,))
    else:
        rewrite_checkpoint(bad, add={BIAS: torch.ones(32)})
    pair = (bad, drope) if side == "rope" else (rope, bad)
    out = tmp_path / "m.json"
    rc, _, err = run(capsys, *measure_args(*pair, out))
    assert rc == 2
    one_sentence(
        err,
        f"{bad} ({side})",
        str(bad),
        MISSING if problem == "missing" else BIAS,
        f"1 {problem} (",
        "--allow-incomplete-weights",
    )
    assert not out.exists()


def test_allow_incomplete_weights_measures_and_records_what_did_not_match(tmp_path, capsys, good_pair):
    _, drope = good_pair
    bad = tmp_path / "rope"
    make_checkpoint(bad, None, drope=False)
    rewrite_checkpoint(bad, drop=(MISSING,), add={BIAS: torch.ones(32)})
    out = tmp_path / "m.json"
    rc, _, err = run(capsys, *measure_args(bad, drope, out, "--allow-incomplete-weights"))
    assert rc == 0, err
    data = json.loads(out.read_text())
    assert data["models"]["rope"]["provenance"]["incomplete_weights"] == {
        "missing": [MISSING],
        "unexpected": [BIAS],
    }
    assert "incomplete_weights" not in data["models"]["drope"]["provenance"]
    assert data["options"]["allow_incomplete_weights"] is True
    report = render_markdown(build_report([], {"custom": pair_info("custom", data)}))
    assert (
        f"rope: loaded with --allow-incomplete-weights although its tensors do not match the model: 1 missing ({MISSING})"
        in report
    )


def test_a_mis_shaped_tensor_is_named_not_a_runtime_error(tmp_path):
    folder = tmp_path / "rope"
    make_checkpoint(folder, None, drope=False)
    rewrite_checkpoint(folder, add={"model.norm.weight": torch.ones(31)})
    with pytest.raises(ModelLoadError, match=r"1 mis-shaped \(model\.norm\.weight\)"):
        load_model(ModelSpec("rope", str(folder), "rope"), device="cpu", dtype=torch.float32)


def test_nan_weights_are_refused_naming_the_tensor(tmp_path, capsys, good_pair):
    _, drope = good_pair
    bad = tmp_path / "rope"
    make_checkpoint(bad, None, drope=False)
    weight = load_file(str(bad / "model.safetensors"))["model.layers.1.self_attn.v_proj.weight"].clone()
    weight[3, 5] = float("nan")
    rewrite_checkpoint(bad, add={"model.layers.1.self_attn.v_proj.weight": weight})
    out = tmp_path / "m.json"
    rc, _, err = run(capsys, *measure_args(bad, drope, out))
    assert rc == 2
    one_sentence(
        err, f"{bad} (rope)", "model.layers.1.self_attn.v_proj.weight", str(bad), "1 non-finite value(s)"
    )
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# a hub id, read through the local HF cache (its published layout: models--org--name/snapshots/<rev>)


def hub_cache_entry(hf_home: Path, repo_id: str, make) -> Path:
    revision = "0123456789abcdef0123456789abcdef01234567"
    entry = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = entry / "snapshots" / revision
    make(snapshot)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(revision)
    return snapshot


def test_a_hub_id_from_the_hf_cache_with_a_missing_tensor_is_refused(tmp_path):
    """The CLI in a fresh process (the HF cache location is read once per process), offline."""
    hf_home = tmp_path / "hf"

    def bad_rope(folder: Path) -> None:
        make_checkpoint(folder, None, drope=False)
        rewrite_checkpoint(folder, drop=(MISSING,))

    snapshot = hub_cache_entry(hf_home, "tiny-org/rope-missing", bad_rope)
    hub_cache_entry(hf_home, "tiny-org/drope", lambda f: make_checkpoint(f, "qk_norm_nope"))
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_CACHE", None)
    out = tmp_path / "m.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "drope_check.cli",
            *map(str, measure_args("tiny-org/rope-missing", "tiny-org/drope", out)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    # the hub id with the cached snapshot's commit it was resolved to (drope_check.models.hub_download.resolve_pair)
    one_sentence(
        proc.stderr, f"tiny-org/rope-missing@{snapshot.name} (rope)", str(snapshot), MISSING, "1 missing ("
    )
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# the embedded GGUF and its dequantised cache


def write_tiny_gguf(
    path: Path, drop: tuple[str, ...] = (), extra: dict[str, tuple[int, ...]] | None = None
) -> Path:
    """A 2-layer Llama GGUF with float32 tensors and a 64-token sentencepiece-style vocabulary."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_embedding_length(32)
    writer.add_block_count(2)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(64)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(
        ["<unk>", "<s>", "</s>"] + ["\u2581" + chr(ord("a") + i % 26) * (1 + i // 26) for i in range(61)]
    )
    writer.add_token_scores([0.0] * 3 + [-float(i) for i in range(61)])
    writer.add_token_types([2, 3, 3] + [1] * 61)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    shapes = {"token_embd.weight": (64, 32), "output_norm.weight": (32,), "output.weight": (64, 32)}
    for i in range(2):
        shapes.update(
            {
                f"blk.{i}.attn_norm.weight": (32,),
                f"blk.{i}.attn_q.weight": (32, 32),
                f"blk.{i}.attn_k.weight": (16, 32),
                f"blk.{i}.attn_v.weight": (16, 32),
                f"blk.{i}.attn_output.weight": (32, 32),
                f"blk.{i}.ffn_norm.weight": (32,),
                f"blk.{i}.ffn_gate.weight": (64, 32),
                f"blk.{i}.ffn_up.weight": (64, 32),
                f"blk.{i}.ffn_down.weight": (32, 64),
            }
        )
    shapes.update(extra or {})
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        if name not in drop:
            writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def embedded_gguf(monkeypatch, tmp_path):
    """Point the embedded model at a GGUF of the test's making, with a fresh cache folder."""
    pytest.importorskip("gguf")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    models_gguf_cache.embedded_base.cache_clear()

    def use(path: Path) -> None:
        monkeypatch.setattr(models_gguf_cache, "embedded_gguf_path", lambda source="embedded": path)

    yield use
    models_gguf_cache.embedded_base.cache_clear()


def test_a_complete_gguf_loads_and_is_cached(tmp_path, embedded_gguf):
    embedded_gguf(write_tiny_gguf(tmp_path / "ok.gguf"))
    loaded = load_model(ModelSpec("rope", "embedded", "rope"), device="cpu", dtype=torch.float32)
    assert (
        "incomplete_weights" not in loaded.provenance
        and "cached to" in loaded.provenance["weights_loaded_from"]
    )


def test_a_gguf_with_a_missing_and_an_unmapped_tensor_is_refused(tmp_path, embedded_gguf):
    bad = write_tiny_gguf(
        tmp_path / "bad.gguf", drop=("blk.1.ffn_down.weight",), extra={"blk.0.attn_q.bias": (32,)}
    )
    embedded_gguf(bad)
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec("rope", "embedded", "rope"), device="cpu", dtype=torch.float32)
    message = str(info.value)
    for name in (
        str(bad),
        f"1 missing ({MISSING})",
        "1 unexpected (blk.0.attn_q.bias)",
        "--allow-incomplete-weights",
    ):
        assert name in message, message
    models_gguf_cache.embedded_base.cache_clear()
    loaded = load_model(
        ModelSpec("rope", "embedded", "rope"),
        device="cpu",
        dtype=torch.float32,
        allow_incomplete_weights=True,
    )
    assert loaded.provenance["incomplete_weights"] == {
        "missing": [MISSING],
        "unexpected": ["blk.0.attn_q.bias"],
    }
    assert "not cached" in loaded.provenance["weights_loaded_from"]
    assert not (tmp_path / "cache" / "dequantized").exists()  # an incomplete load never becomes the cache


def test_a_dequantised_cache_entry_with_a_missing_tensor_is_refused_naming_the_folder(
    tmp_path, embedded_gguf
):
    gguf_file = tmp_path / "weights.gguf"
    gguf_file.write_bytes(b"not parsed: the cache entry keyed by this file's sha256 is read instead")
    embedded_gguf(gguf_file)
    entry = models_gguf_cache.dequantized_cache_path(models_checkpoints.file_sha256(gguf_file))
    model = build_llama(tiny_config(), seed=1, attn=None)

    class Tokenizer:
        def save_pretrained(self, folder: str) -> None:
            save_tokenizer(Path(folder))

    models_gguf_cache._write_dequantized_cache(model, Tokenizer(), entry, "sha")
    weights = load_file(str(entry / "model.safetensors"))
    del weights[MISSING]
    save_file(weights, str(entry / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        ModelLoadError,
        match=rf"the dequantised cache {entry} do not match the model \(1 missing "
        rf"\({MISSING}\)\).*delete that folder to rebuild it",
    ):
        load_model(ModelSpec("rope", "embedded", "rope"), device="cpu", dtype=torch.float32)


def test_the_pytest_option_reaches_the_measure_options(pytestconfig: pytest.Config) -> None:
    """``--drope-allow-incomplete-weights`` is registered (off by default) and becomes
    ``MeasureOptions.allow_incomplete_weights``."""
    from drope_check.pytest_plugin.session import measure_options

    assert pytestconfig.getoption("drope_allow_incomplete_weights") is False
    given = {"drope_allow_incomplete_weights": True}
    config = SimpleNamespace(getoption=lambda name, default=None: given.get(name, default))
    assert measure_options(config).allow_incomplete_weights is True
