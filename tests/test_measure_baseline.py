"""The baseline perplexity comes from the capture pass's own output (no second forward), and it is
exactly the separate ``lines``-protocol computation; spike rules that pick the same layer share
one ablation pass."""

from __future__ import annotations

import pytest
import torch

import drope_check.engine.attention  # noqa: F401  (registers the attention function)
from drope_check.engine import interventions
from drope_check.engine.perplexity import perplexity_lines
from drope_check.engine.protocol import Protocol
from drope_check.measurements.measure import measure_model
from drope_check.models.loading import LoadedModel
from drope_check.models.pairs import ModelSpec
from drope_check.models.tiny_models import build_llama, llama_config

BOS, PAD = 1, 0


def tiny_loaded(seed: int = 0) -> LoadedModel:
    model = build_llama(llama_config(layers=3, max_positions=128), seed=seed)
    spec = ModelSpec(role="rope", source="tiny", variant="rope")
    return LoadedModel(model, None, spec, BOS, PAD, {"model_id": "tiny"})


def seqs_of(lengths: list[int], seed: int = 3) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[BOS, *torch.randint(2, 64, (n - 1,), generator=g).tolist()] for n in lengths]


def test_baseline_from_capture_pass_equals_separate_lines_perplexity(monkeypatch):
    loaded = tiny_loaded()
    seqs = seqs_of([23, 9, 17, 30, 5, 12])  # batches of 4 with right padding, and a short last batch
    protocol = Protocol(batch_size=4, n_texts=len(seqs), max_tokens=32)
    forwards = []
    # the decoder stack: model_nll runs it, then the output head on the scored positions only
    handle = loaded.model.model.register_forward_hook(lambda m, i, o: forwards.append(i))
    try:
        result = measure_model(loaded, seqs, protocol)
    finally:
        handle.remove()
    assert len(forwards) == 2  # one capture forward per batch and nothing else
    separate = perplexity_lines(loaded.model, seqs, PAD, batch_size=4)
    got = result["perplexity"]["lines"]
    # same kernel, same batches: the same hidden states and head, so the same sums bit for bit
    assert got["per_sequence"] == [[float(n), int(c)] for n, c in separate.per_sequence]
    assert got["ppl"] == separate.ppl
    assert result["scalars"]["ppl_baseline"] == separate.ppl


def test_spike_rules_on_the_same_layer_share_one_ablation_pass(monkeypatch):
    loaded = tiny_loaded()
    seqs = seqs_of([11, 7, 14])
    calls = []
    real = interventions.bos_mlp_ablation

    def counting(model, layer, **kwargs):
        calls.append(layer)
        return real(model, layer, **kwargs)

    monkeypatch.setattr(interventions, "bos_mlp_ablation", counting)
    which = ("bos_mlp_ablation:argmax-ratio", "bos_mlp_ablation:max-write")
    same = interventions.measure_interventions(
        loaded.model, seqs, PAD, {"argmax-ratio": 1, "max-write": 1}, which
    )
    assert calls == [1]
    assert same["bos_mlp_ablation:argmax-ratio"]["ppl"] == same["bos_mlp_ablation:max-write"]["ppl"]
    assert same["bos_mlp_ablation:max-write"]["spike_rule"] == "max-write"
    calls.clear()
    differ = interventions.measure_interventions(
        loaded.model, seqs, PAD, {"argmax-ratio": 1, "max-write": 2}, which
    )
    assert calls == [1, 2]
    assert differ["bos_mlp_ablation:argmax-ratio"]["ppl"] == same["bos_mlp_ablation:argmax-ratio"]["ppl"]
    assert differ["bos_mlp_ablation:max-write"]["ppl"] != differ["bos_mlp_ablation:argmax-ratio"]["ppl"]


def test_measure_pair_refuses_interventions_for_a_role_the_pair_does_not_have() -> None:
    """Per-role interventions (the claims run asks only for what its claims read): a typo in a role is
    an error before any model loads, not a model silently measured without them."""
    from drope_check.measurements.measure import measure_pair

    with pytest.raises(ValueError, match=r"unknown role\(s\) \['nope'\] of pair smollm2-135m"):
        measure_pair("smollm2-135m", interventions={"rope": ("qk_disruption:report",), "nope": ()})
