"""A model spread over devices by accelerate's ``device_map`` measures exactly what it measures on one device.

What is claimed: with ``load_model(..., device_map=...)`` (``drope-check measure --device-map auto``,
``pytest --drope-device-map auto``) the one-pass capture (residual statistics, attention to BOS from the
exact q/k), the baseline perplexity, the BOS-MLP ablation hook and both Q/K disruption rules give the same
numbers as the same checkpoint loaded on one device. Why it could fail: accelerate replaces module
forwards with hooks that move inputs between devices and stream offloaded weights in from CPU memory or
disk (parameters sit on the ``meta`` device between calls), and the suite's own hooks sit on the same
modules (the decoder layers, the MLP write, q/k projections with DroPE's QK-norm hooks, the attention
function); inputs must go to the embedding's execution device and the logits to the targets' device.

Here (no GPU) the map puts layers on ``"cpu"`` and ``"disk"``: every offloaded module runs through
accelerate's hooks with weights loaded from the offload folder at each call. Tolerance: none. On one
CPU the same kernels run in the same order, so the numbers must be bitwise equal (measured 2026-12-04 on
the 2-core CPU machine, torch 2.13.0+cpu, accelerate 1.16.0: 0.0 difference in every per-layer array,
per-head score, scalar and perplexity, on the RoPE and the DroPE checkpoint; the offloaded measurement
takes ~2.5 s per checkpoint against ~0.3 s on one device). Layers on different devices (a GPU and the
CPU) are checked by ``benchmarks/gpu_smoke.py``'s ``device_map`` step, to 1e-4 relative.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import drope_check.measurements.measure
from drope_check import cli
from drope_check.engine.protocol import Protocol
from drope_check.measurements.measure import measure_model
from drope_check.models.loading import load_model
from drope_check.models.pairs import ModelSpec
from drope_check.models.tiny_checkpoints import write_pair_checkpoints
from drope_check.models.tiny_models import build_llama, llama_config

pytest.importorskip("accelerate")

INTERVENTIONS = (
    "bos_mlp_ablation:argmax-ratio",
    "bos_mlp_ablation:max-write",
    "qk_disruption:report",
    "qk_disruption:jin",
)
#: Layers alternate between CPU memory and disk; the embedding stays on CPU, the output head goes to disk.
OFFLOAD_MAP = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.layers.3": "disk",
    "model.norm": "cpu",
    "lm_head": "disk",
}


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny RoPE checkpoint and its DroPE counterpart in SakanaAI's layout (QK-norm, ``softmax_scale``)."""
    model = build_llama(llama_config(layers=4, vocab_size=64), seed=1, attn=None)
    return write_pair_checkpoints(model, tmp_path_factory.mktemp("pair"), softmax_scale=0.3)


def sequences() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [[1, *torch.randint(3, 64, (n,), generator=g).tolist()] for n in (15, 9, 20)]


def measured(loaded) -> dict:
    """Everything a measurement reports about the model, without provenance (devices, seconds differ)."""
    result = measure_model(
        loaded, sequences(), Protocol(batch_size=2, max_tokens=32, n_texts=3), INTERVENTIONS
    )
    return {k: v for k, v in result.items() if k != "provenance"}


@pytest.mark.parametrize("role", ["rope", "drope"])
def test_offloaded_pair_measures_like_one_device(pair_dirs, role, tmp_path):
    folder = pair_dirs[0] if role == "rope" else pair_dirs[1]
    spec = ModelSpec(role, str(folder), role)
    one = load_model(spec, bos_token="<s>", device="cpu", dtype=torch.float32)
    spread = load_model(
        spec,
        bos_token="<s>",
        dtype=torch.float32,
        device_map=OFFLOAD_MAP,
        offload_folder=tmp_path / "offload",
    )
    # guard: accelerate really placed (and offloaded) the modules, and the native DroPE path ran
    assert spread.model.hf_device_map == OFFLOAD_MAP
    assert any(p.device.type == "meta" for p in spread.model.parameters()), "nothing was offloaded"
    assert spread.provenance["device_map"] == {"requested": "explicit", "modules": OFFLOAD_MAP}
    if role == "drope":
        assert spread.provenance["loader"] == "native" and spread.provenance["softmax_scale"] == 0.3
    expected, got = measured(one), measured(spread)
    assert set(got["interventions"]) == set(INTERVENTIONS)
    for name in INTERVENTIONS:  # the hooks fired on the offloaded modules
        assert got["interventions"][name]["record"]["summary"]["hook_calls"] > 0, name
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks where 'auto' puts a model without a GPU")
def test_auto_map_on_a_cpu_only_machine_loads_whole_on_cpu(pair_dirs):
    """``auto`` without a GPU keeps every module on the CPU: same numbers, and provenance says where it ran."""
    spec = ModelSpec("drope", str(pair_dirs[1]), "drope")
    loaded = load_model(spec, bos_token="<s>", dtype=torch.float32, device_map="auto")
    assert loaded.provenance["device_map"]["requested"] == "auto"
    assert set(loaded.provenance["device_map"]["modules"].values()) == {"cpu"}
    assert loaded.provenance["device"] == "cpu"
    one = load_model(spec, bos_token="<s>", device="cpu", dtype=torch.float32)
    assert json.dumps(measured(loaded), sort_keys=True) == json.dumps(measured(one), sort_keys=True)


def test_device_and_device_map_exclude_each_other(pair_dirs):
    with pytest.raises(ValueError, match="device or device_map"):
        load_model(ModelSpec("rope", str(pair_dirs[0]), "rope"), device="cpu", device_map="auto")


# --------------------------------------------------------------------------------------------------
# the command line: user errors before any weights load


@pytest.fixture
def no_weights(monkeypatch):
    def guard(*_args, **_kwargs):
        raise AssertionError("load_model was called: the error was not found before loading weights")

    monkeypatch.setattr(drope_check.measurements.measure, "load_model", guard)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--device-map", "everywhere"], ["--device-map", "auto"]),
        (["--device-map", "auto", "--device", "cpu"], ["--device cpu", "--device-map auto"]),
        (["--offload-folder", "OFFLOAD"], ["--offload-folder", "--device-map"]),
    ],
)
def test_bad_device_map_options_are_one_sentence_before_loading(
    pair_dirs, tmp_path, capsys, no_weights, extra, named
):
    argv = [
        "measure",
        "--rope",
        str(pair_dirs[0]),
        "--drope",
        str(pair_dirs[1]),
        "--out",
        str(tmp_path / "m.json"),
        *[str(tmp_path / "off") if a == "OFFLOAD" else a for a in extra],
    ]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for name in named:
        assert name in err, err


def test_device_map_on_an_embedded_pair_is_refused(tmp_path, capsys, no_weights):
    rc = cli.main(
        ["measure", "--pair", "smollm2-135m", "--device-map", "auto", "--out", str(tmp_path / "m.json")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "--device-map" in err and "embedded" in err, err


def test_pytest_options_reach_the_measure_options():
    from drope_check.pytest_plugin.session import measure_options

    class Config:
        values = {"drope_device_map": "auto", "drope_offload_folder": "/tmp/off"}

        def getoption(self, name, default=None):  # pytest.Config.getoption's signature
            return self.values.get(name, default)

    options = measure_options(Config())
    assert options.device_map == "auto" and options.offload_folder == "/tmp/off" and options.device is None
