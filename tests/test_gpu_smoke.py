"""benchmarks/gpu_smoke.py: skips cleanly without CUDA, and its steps work end to end on a tiny
CPU model (so the first GPU run spends its minutes measuring, not on a typo)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_smoke  # noqa: E402
import memory_probe  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=4, head_dim=16, vocab_size=64, max_position_embeddings=128)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_smoke.py", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "gpu_smoke: SKIPPED, nothing measured: no CUDA device (torch.cuda.is_available() is False)"
    assert not out.exists()


def test_steps_on_a_tiny_cpu_model(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_smoke, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_smoke, "BATCH_SIZE", 2)
    kernel: dict = {}
    gpu_smoke.kernel_checks(kernel, shape=(3, 4, 40, 16))
    assert kernel["float32"]["kernel_path"] and kernel["float32"]["output_bit_identical"]
    assert kernel["float32-padded"]["output_bit_identical"]
    assert kernel["kernel_lse_max_rel_error"]["torch.float32"] <= gpu_smoke.PROMISED_RELATIVE

    rope_model = memory_probe.llama2_7b_shaped("cpu", torch.bfloat16, **TINY)
    rope_dir, drope_dir = gpu_smoke.write_checkpoints(rope_model, tmp_path)
    drope = gpu_smoke.load(drope_dir, "drope", "drope")
    assert drope.provenance["loader"] == "native" and drope.provenance["attention_type"] == "qk_norm_nope"
    data: dict = {}
    gpu_smoke.measure_paths(drope, data, shapes=((16, 3), (24, 1)))
    for key in ("T16xB3", "T24xB1"):
        row = data[key]
        assert row["finite"] and row["capture_ratio"] > 0 and math.isfinite(row["baseline_ppl"])
        assert set(row["intervention_ppl"]) == {
            "bos_mlp_ablation:argmax-ratio", "bos_mlp_ablation:max-write", "qk_disruption:report", "qk_disruption:jin"}
        assert "float64" in row["precision"]
    check: dict = {}
    gpu_smoke.float64_fallback_check(drope, check, t=24)
    assert check["ok"] and check["layers_in_float64"] == 1
    # RMSNorm runs over all heads at once, so single heads spread around the target: same order
    assert 0.5 < check["layer1_q_norm_max"] / gpu_smoke.DROPE_LAYER1_QK_NORMS[0] < 2
    rope = gpu_smoke.load(rope_dir, "rope", "rope")
    again: dict = {}
    gpu_smoke.measure_paths(rope, again, shapes=((16, 2),), interventions=False)
    assert again["T16xB2"]["finite"]
