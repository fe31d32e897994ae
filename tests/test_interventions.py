"""Guard and correctness tests of the BOS-MLP ablation and the Q/K disruption.

What is claimed: each intervention touches exactly the layer, rows, heads and dims it names; it
changes the model's output; with the context closed the model is bit-identical to before and no
hook or attention registration is left behind, also when the body raised; an ablation of an MLP
that writes nothing to BOS changes nothing; the ablated forward equals a forward computed by hand;
the Q/K rules replace exactly the planted massive column by its mean, index k by KV head under GQA,
act pre-rotary ("report") or post-rotary ("jin"), and ignore padding, so a padded batch gives the
per-sequence result. All on tiny random Llama models (CPU, float32).
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaForCausalLM

import drope_check.engine.attention as attention
from drope_check.engine.bos_ablation import bos_mlp_ablation
from drope_check.engine.interventions import measure_interventions
from drope_check.engine.perplexity import perplexity_lines
from drope_check.engine.qk_disruption import qk_disruption, replace_massive_columns
from drope_check.models.tiny_models import build_llama, llama_config

#: Batched vs single perplexity: the only difference is float32 summation order inside SDPA and
#: the matmuls for padded shapes, measured ~1e-7 relative on these models.
BATCH_REL_TOL = 1e-5
BOS, PAD = 1, 0


def make_model(
    layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0, attn: str = "drope_check"
) -> LlamaForCausalLM:
    """A tiny random Llama (GQA by default) with weights large enough that every block matters."""
    config = llama_config(
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        max_positions=128,
        initializer_range=0.3,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=2,
    )
    return build_llama(config, seed=seed, attn=attn)


class IdentityRotary(torch.nn.Module):
    """cos = 1, sin = 0: the DroPE rotation (q, k pass through unchanged)."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*position_ids.shape, self.head_dim)
        return torch.ones(shape, dtype=x.dtype), torch.zeros(shape, dtype=x.dtype)


def random_seqs(lengths: list[int], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[BOS] + torch.randint(3, 64, (n - 1,), generator=g).tolist() for n in lengths]


def right_pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), PAD)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def logits_of(model: LlamaForCausalLM, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def assert_no_hooks(model: torch.nn.Module) -> None:
    for name, module in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
            "_forward_hooks_always_called",
        ):
            assert not getattr(module, attr), f"{name or 'model'}.{attr} not empty: {getattr(module, attr)}"
    assert attention.active_registrations() == 0


# --------------------------------------------------------------------------------------------------
# guard tests


def test_ablation_fires_on_named_layer_and_bos_rows_only() -> None:
    model = make_model(layers=3)
    assert_no_hooks(model)
    ids, mask = right_pad(random_seqs([7, 4, 9]))
    before = logits_of(model, ids, mask)
    seen: dict[int, torch.Tensor] = {}
    with bos_mlp_ablation(model, 1) as record:
        spies = [
            layer.mlp.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o.clone()))
            for i, layer in enumerate(model.model.layers)
        ]
        during = logits_of(model, ids, mask)
        for spy in spies:
            spy.remove()
    after = logits_of(model, ids, mask)

    assert record.calls == {"model.layers.1.mlp": 1}
    assert [(t["layer"], t["row"], t["position"]) for t in record.touched] == [
        (1, 0, 0),
        (1, 1, 0),
        (1, 2, 0),
    ]
    assert all(t["bos_mlp_output_norm"] > 0 for t in record.touched)
    assert torch.all(seen[1][:, 0] == 0), "BOS row of the named layer not zeroed"
    assert torch.all(seen[1][:, 1:].abs().sum(-1) > 0), "non-BOS rows of the named layer touched"
    for i in (0, 2):
        assert torch.all(seen[i][:, 0].abs().sum(-1) > 0), f"layer {i} touched"
    assert not torch.allclose(before, during), "ablation did not change the logits"
    assert torch.equal(before, after), "model not bit-identical after the context"
    assert_no_hooks(model)
    json.dumps(record.to_dict())


@pytest.mark.parametrize("which", ["ablation", "report", "jin"])
def test_hooks_removed_when_body_raises(which: str) -> None:
    model = make_model()
    ids, mask = right_pad(random_seqs([6, 3]))
    before = logits_of(model, ids, mask)
    context = {
        "ablation": lambda: bos_mlp_ablation(model, 0),
        "report": lambda: qk_disruption(model, "report", threshold=0.0),
        "jin": lambda: qk_disruption(model, "jin", threshold=None),
    }[which]()
    with pytest.raises(RuntimeError, match="boom"):
        with context as record:
            during = logits_of(model, ids, mask)
            raise RuntimeError("boom")
    assert sum(record.calls.values()) > 0
    assert not torch.allclose(before, during)
    assert_no_hooks(model)
    assert torch.equal(before, logits_of(model, ids, mask))


def test_ablation_of_silent_mlp_changes_nothing() -> None:
    """An MLP whose output is zero by construction: ablating it must be an exact no-op."""
    model = make_model()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.zero_()
    ids, mask = right_pad(random_seqs([8, 5]))
    before = logits_of(model, ids, mask)
    with bos_mlp_ablation(model, 1) as record:
        during = logits_of(model, ids, mask)
    assert torch.equal(before, during)
    assert len(record.touched) == 2
    assert all(t["bos_mlp_output_norm"] == 0.0 for t in record.touched)
    assert record.summary()["bos_mlp_output_norm_max"] == 0.0


def test_ablated_logits_equal_hand_computed_forward() -> None:
    model = make_model(layers=3, attn="sdpa")
    ids = torch.tensor(random_seqs([10])[0])[None]
    layer_ablated = 1

    with torch.inference_mode():
        base = model.model
        x = base.embed_tokens(ids)
        position_embeddings = base.rotary_emb(x, torch.arange(ids.shape[1])[None])
        for i, layer in enumerate(base.layers):
            attn_out, _ = layer.self_attn(
                hidden_states=layer.input_layernorm(x),
                position_embeddings=position_embeddings,
                attention_mask=None,
            )
            h = x + attn_out
            m = layer.mlp(layer.post_attention_layernorm(h))
            if i == layer_ablated:
                m = m.clone()
                m[:, 0] = 0
            x = h + m
        expected = model.lm_head(base.norm(x))

    with bos_mlp_ablation(model, layer_ablated):
        got = logits_of(model, ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(got, logits_of(model, ids), atol=1e-3)


def test_ablation_skips_cached_generation_steps() -> None:
    """Upstream zeroed row 0 of every call, i.e. each new token during cached generation; we don't."""
    model = make_model()
    prompt = torch.tensor([random_seqs([5])[0]])
    with bos_mlp_ablation(model, 0) as record, torch.inference_mode():
        generated = model.generate(
            input_ids=prompt, max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=PAD
        )
    assert record.calls == {"model.layers.0.mlp": 4}
    assert record.skipped_calls == 3
    assert [(t["call"], t["row"], t["position"]) for t in record.touched] == [(0, 0, 0)]

    # cached generation under the ablation = greedy decoding of the uncached ablated forward
    with bos_mlp_ablation(model, 0):
        full = logits_of(model, generated[:, :-1])
    assert torch.equal(full[0, prompt.shape[1] - 1 :].argmax(-1), generated[0, prompt.shape[1] :])

    # upstream's hook, reproduced on request, hits every decoding step's new token
    with bos_mlp_ablation(model, 0, every_call=True) as upstream, torch.inference_mode():
        model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=PAD)
    assert [(t["call"], t["position"]) for t in upstream.touched] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert upstream.skipped_calls == 0
    assert_no_hooks(model)


def test_ablation_left_padding_zeroes_first_real_token() -> None:
    model = make_model()
    seqs = random_seqs([4, 6])
    ids = torch.tensor([[PAD, PAD] + seqs[0], seqs[1]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
    with bos_mlp_ablation(model, 1) as record, torch.inference_mode():
        model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=PAD
        )
    assert [(t["call"], t["row"], t["position"]) for t in record.touched] == [(0, 0, 2), (0, 1, 0)]
    assert record.skipped_calls == 1


def test_clear_errors() -> None:
    model = make_model()
    with pytest.raises(ValueError, match=r"out of range .*LlamaForCausalLM.* 0\.\.1"):
        with bos_mlp_ablation(model, 2):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with bos_mlp_ablation(model, -1):
            pass
    with pytest.raises(ValueError, match="'report'.*'jin'"):
        with qk_disruption(model, "std10"):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with qk_disruption(model, "report", layers=[5]):
            pass
    with pytest.raises(RuntimeError, match="set_attn_implementation"):
        with qk_disruption(make_model(attn="sdpa"), "jin", threshold=None):
            pass
    with pytest.raises(ValueError, match="unknown intervention"):
        measure_interventions(model, random_seqs([4]), PAD, {}, which=["zero_everything"])
    with pytest.raises(ValueError, match="spike_layers"):
        measure_interventions(
            model, random_seqs([4]), PAD, {"argmax-ratio": 1}, which=["bos_mlp_ablation:max-write"]
        )
    assert_no_hooks(model)


# --------------------------------------------------------------------------------------------------
# Q/K disruption on hand-built activations


def planted(
    batch: int, length: int, heads: int, dims: int, b: int, h: int, d: int, scale: float, seed: int = 0
):
    """Random +-1 activations (every column norm = sqrt(T)), one column scaled by ``scale``
    with alternating 1.5 / 0.5 factors so that its mean differs from its values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (batch, length, heads, dims), generator=g).float() * 2 - 1
    factors = torch.tensor([1.5 if t % 2 == 0 else 0.5 for t in range(length)])
    x[b, :, h, d] = scale * factors
    return x


def test_exactly_the_planted_column_is_replaced_by_its_mean() -> None:
    x = planted(1, 6, 2, 8, b=0, h=1, d=3, scale=50.0)
    result = replace_massive_columns(x, None, threshold=5.0, top_k=1)
    expected = x.clone()
    expected[0, :, 1, 3] = x[0, :, 1, 3].mean()
    torch.testing.assert_close(result.output, expected, rtol=1e-6, atol=0)
    column = torch.zeros_like(x, dtype=torch.bool)
    column[0, :, 1, 3] = True
    assert torch.equal(result.output[~column], x[~column])
    assert torch.unique(result.output[0, :, 1, 3]).numel() == 1
    assert result.replaced.nonzero().tolist() == [[0, 1, 3]]
    assert result.norms[0, 1, 3] == pytest.approx(float(torch.linalg.vector_norm(x[0, :, 1, 3])))


def test_below_threshold_nothing_is_replaced() -> None:
    # ratio of the planted dim's norm to the head mean: 8 s / (s + 7) with s = scale * rms(factors)
    x = planted(1, 6, 2, 8, b=0, h=1, d=3, scale=2.0)
    norms = torch.linalg.vector_norm(x, dim=1)
    ratio = float(norms[0, 1, 3] / norms[0, 1].mean())
    assert 1 < ratio < 5
    result = replace_massive_columns(x, None, threshold=5.0, top_k=1)
    assert torch.equal(result.output, x) and not result.replaced.any()
    assert replace_massive_columns(x, None, threshold=ratio * 0.999).replaced.sum() == 1
    assert not replace_massive_columns(x, None, threshold=ratio * 1.001).replaced.any()
    # without threshold (Jin) every head gets its top-1 dim replaced
    assert replace_massive_columns(x, None, threshold=None).replaced.sum() == 2


def test_padding_is_excluded_and_untouched() -> None:
    x = planted(1, 5, 2, 8, b=0, h=0, d=6, scale=40.0)
    padded = torch.cat([x, torch.full((1, 3, 2, 8), 1e4)], dim=1)
    real = torch.tensor([[True] * 5 + [False] * 3])
    single = replace_massive_columns(x, None, threshold=5.0)
    batched = replace_massive_columns(padded, real, threshold=5.0)
    assert torch.equal(batched.output[:, :5], single.output)
    assert torch.equal(batched.output[:, 5:], padded[:, 5:])
    assert torch.equal(batched.norms, single.norms)
    assert torch.equal(batched.replaced, single.replaced)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 12),
    heads=st.integers(1, 4),
    dims=st.integers(8, 32),
    data=st.data(),
)
def test_property_planted_column_only(
    batch: int, length: int, heads: int, dims: int, data: st.DataObject
) -> None:
    b = data.draw(st.integers(0, batch - 1), label="b")
    h = data.draw(st.integers(0, heads - 1), label="h")
    d = data.draw(st.integers(0, dims - 1), label="d")
    pads = data.draw(st.lists(st.integers(0, length - 1), min_size=batch, max_size=batch), label="pads")
    scale = data.draw(st.floats(60.0, 1e4), label="scale")
    x = planted(
        batch, length, heads, dims, b, h, d, scale, seed=data.draw(st.integers(0, 2**16), label="seed")
    )
    real = torch.tensor([[t < length - p for t in range(length)] for p in pads])
    x = torch.where(real[:, :, None, None], x, torch.tensor(-7e3))  # loud padding
    result = replace_massive_columns(x, real, threshold=5.0, top_k=1)

    assert result.replaced.nonzero().tolist() == [[b, h, d]]
    n = int(real[b].sum())
    column = torch.zeros_like(x, dtype=torch.bool)
    column[b, :, h, d] = True
    assert torch.equal(result.output[~column], x[~column]), "something besides the planted column changed"
    assert torch.equal(result.output[b, n:, h, d], x[b, n:, h, d]), "padding changed"
    torch.testing.assert_close(result.output[b, :n, h, d], x[b, :n, h, d].mean().expand(n), rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------------
# Q/K disruption on models


def plant_massive_key(model: LlamaForCausalLM, layer: int, head: int, dim: int, scale: float = 20.0) -> None:
    """Make k_proj's output column (KV head ``head``, dim ``dim``) ~60x larger than the others."""
    k_proj = model.model.layers[layer].self_attn.k_proj
    row = head * model.model.layers[layer].self_attn.head_dim + dim
    with torch.no_grad():
        k_proj.weight[row] = scale * torch.sign(k_proj.weight[row] + 1e-3)


def spy_outputs(modules: dict[str, torch.nn.Module], store: dict[str, torch.Tensor]) -> list:
    return [
        m.register_forward_hook(lambda mod, a, o, k=k: store.__setitem__(k, o.clone()))
        for k, m in modules.items()
    ]


def test_report_rule_gqa_indexes_keys_by_kv_head() -> None:
    """A massive column planted in k head 1 of 2 (4 query heads): only that column changes."""
    model = make_model(heads=4, kv_heads=2)
    attn = model.model.layers[0].self_attn
    head, dim = 1, 3
    plant_massive_key(model, 0, head, dim)
    ids, mask = right_pad(random_seqs([9, 6]))
    projections = {"q": attn.q_proj, "k": attn.k_proj}
    baseline: dict[str, torch.Tensor] = {}
    handles = spy_outputs(projections, baseline)
    logits_of(model, ids, mask)
    for handle in handles:
        handle.remove()

    seen: dict[str, torch.Tensor] = {}
    with qk_disruption(model, "report", layers=[0]) as record:
        handles = spy_outputs(projections, seen)  # appended: run after the (prepended) disruption hook
        logits_of(model, ids, mask)
        for handle in handles:
            handle.remove()

    assert torch.equal(seen["q"], baseline["q"]), "query heads touched"
    changed = (seen["k"] != baseline["k"]).any(dim=(0, 1)).nonzero().flatten().tolist()
    assert changed == [head * 8 + dim]
    for row, n in enumerate(mask.sum(1).tolist()):
        column = baseline["k"][row, :n, head * 8 + dim]
        assert torch.allclose(seen["k"][row, :n, head * 8 + dim], column.mean().expand(n))
        assert torch.equal(seen["k"][row, n:], baseline["k"][row, n:]), "padded positions touched"
    assert [(t["layer"], t["tensor"], t["head"], t["dim"], t["sequences"]) for t in record.touched] == [
        (0, "k", head, dim, 2)
    ]
    assert record.calls == {"model.layers.0.self_attn.q_proj": 1, "model.layers.0.self_attn.k_proj": 1}
    assert record.examined == {"q": 2 * 4, "k": 2 * 2}


def test_report_rule_runs_before_a_qk_norm_hook() -> None:
    """A loader's QK-norm hook on q_proj must see the disrupted raw projection, not the reverse."""
    model = make_model()
    attn = model.model.layers[0].self_attn
    raw: dict[str, torch.Tensor] = {}
    norm_hook = attn.q_proj.register_forward_hook(lambda m, a, o: o * 100.0)
    input_spy = attn.q_proj.register_forward_pre_hook(lambda m, a: raw.__setitem__("x", a[0].clone()))
    try:
        ids = torch.tensor(random_seqs([7]))
        with qk_disruption(model, "report", threshold=None, layers=[0]) as record:
            logits_of(model, ids)
    finally:
        norm_hook.remove()
        input_spy.remove()
    with torch.inference_mode():
        q = torch.nn.functional.linear(raw["x"], attn.q_proj.weight).view(1, 7, 4, 8)
        norms = torch.linalg.vector_norm(q, dim=1)[0]
    for t in (t for t in record.touched if t["tensor"] == "q"):
        assert t["norm"] == pytest.approx(float(norms[t["head"], t["dim"]]), rel=1e-5)


def capture_qk(
    model: LlamaForCausalLM, ids: torch.Tensor, layer: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    store: dict[str, torch.Tensor] = {}

    def observer(call) -> None:
        store["q"], store["k"] = call.query.clone(), call.key.clone()

    with attention.observe_attention(model, observer, [layer]):
        logits_of(model, ids)
    return store["q"], store["k"]


def test_jin_rule_acts_post_rotary() -> None:
    """On a RoPE model Jin's replaced post-rotary columns are constant; the report rule's are not."""
    model = make_model()
    ids = torch.tensor(random_seqs([10]))
    q0, k0 = capture_qk(model, ids)
    with qk_disruption(model, "jin", threshold=None, top_k=1, layers=[0]) as jin:
        qj, kj = capture_qk(model, ids)
    for tensor, before, after in (("q", q0, qj), ("k", k0, kj)):
        entries = [t for t in jin.touched if t["tensor"] == tensor]
        assert len(entries) == before.shape[1]  # one dim per head
        for t in entries:
            h, d = t["head"], t["dim"]
            norms = torch.linalg.vector_norm(before[0, h], dim=0)
            assert d == int(norms.argmax())
            assert torch.allclose(after[0, h, :, d], before[0, h, :, d].mean().expand(10))
            others = torch.ones(before.shape[-1], dtype=torch.bool)
            others[d] = False
            assert torch.equal(after[0, h][:, others], before[0, h][:, others])

    with qk_disruption(model, "report", threshold=None, top_k=1, layers=[0]) as report:
        qr, kr = capture_qk(model, ids)
    for t in (t for t in report.touched if t["tensor"] == "k"):
        column = kr[0, t["head"], :, t["dim"]]
        assert not torch.allclose(column, column.mean().expand_as(column)), (
            "RoPE did not rotate the replaced column"
        )
    assert not torch.allclose(kr, kj)


def test_jin_equals_report_under_identity_rotation() -> None:
    """For a DroPE-like model (identity rotation, no QK-norm) pre- and post-rotary q/k coincide."""
    model = make_model()
    model.model.rotary_emb = IdentityRotary(8)
    ids, mask = right_pad(random_seqs([8, 11, 5]))
    with qk_disruption(model, "jin", threshold=None) as jin:
        a = logits_of(model, ids, mask)
    with qk_disruption(model, "report", threshold=None) as report:
        b = logits_of(model, ids, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    key = lambda t: (t["layer"], t["tensor"], t["head"], t["dim"], t["sequences"])  # noqa: E731
    assert sorted(map(key, jin.touched)) == sorted(map(key, report.touched))
    assert not torch.allclose(a, logits_of(model, ids, mask))


@pytest.mark.parametrize(
    "which", ["bos_mlp_ablation:argmax-ratio", "qk_disruption:report", "qk_disruption:jin"]
)
def test_interventions_batched_equal_single(which: str) -> None:
    model = make_model(layers=3, seed=3)
    plant_massive_key(model, 1, 0, 5)  # so that upstream's 5x threshold fires somewhere
    seqs = random_seqs([9, 4, 13, 6, 2, 11], seed=5)
    batched = measure_interventions(model, seqs, PAD, {"argmax-ratio": 1}, which=[which], batch_size=4)[which]
    single = measure_interventions(model, seqs, PAD, {"argmax-ratio": 1}, which=[which], batch_size=1)[which]
    assert batched["ppl"] == pytest.approx(single["ppl"], rel=BATCH_REL_TOL)
    assert batched["ratio"] == pytest.approx(single["ratio"], rel=BATCH_REL_TOL)
    assert batched["ratio"] != pytest.approx(1.0, abs=1e-4), "intervention had no effect"
    for (nb, cb), (ns, cs) in zip(
        batched["perplexity"]["per_sequence"], single["perplexity"]["per_sequence"], strict=True
    ):
        assert cb == cs and nb == pytest.approx(ns, rel=BATCH_REL_TOL)
    key = lambda t: tuple(t.get(k) for k in ("layer", "tensor", "head", "dim", "sequences", "row"))  # noqa: E731
    if which.startswith("qk"):
        assert sorted(map(key, batched["record"]["touched"])) == sorted(map(key, single["record"]["touched"]))
    else:
        assert len(batched["record"]["touched"]) == len(single["record"]["touched"]) == len(seqs)
    assert_no_hooks(model)


def test_measure_interventions_is_json_and_complete() -> None:
    model = make_model(layers=3)
    seqs = random_seqs([7, 12, 5])
    baseline = perplexity_lines(model, seqs, PAD)
    out = measure_interventions(model, seqs, PAD, {"argmax-ratio": 2, "max-write": 1}, baseline=baseline)
    assert list(out) == [
        "bos_mlp_ablation:argmax-ratio",
        "bos_mlp_ablation:max-write",
        "qk_disruption:report",
        "qk_disruption:jin",
    ]
    assert out["bos_mlp_ablation:argmax-ratio"]["layer"] == 2
    assert out["bos_mlp_ablation:max-write"]["record"]["calls"] == {"model.layers.1.mlp": 1}
    for entry in out.values():
        assert entry["baseline_ppl"] == baseline.ppl
        assert entry["ratio"] == pytest.approx(entry["ppl"] / baseline.ppl)
        assert entry["protocol"] == "lines"
    assert out["qk_disruption:jin"]["record"]["params"]["threshold"] is None
    json.dumps(out)
    with pytest.raises(ValueError, match="'lines' result"):
        measure_interventions(model, seqs[:2], PAD, {"argmax-ratio": 1, "max-write": 0}, baseline=baseline)
    assert_no_hooks(model)
