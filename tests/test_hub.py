"""The download path (drope_check.models.hub) against a local hub endpoint, with huggingface_hub's own client.

Every test talks HTTP to the server process of the ``local_hub`` fixture (tests/conftest.py), which
serves tiny stand-ins under the report's repo ids: ``meta-llama/Llama-2-7b-hf`` gated, the SakanaAI
DroPE public. Nothing of huggingface_hub is replaced; the tests pass the endpoint, cache folder and
token explicitly (as ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_TOKEN`` would give them), and only
``HF_HUB_OFFLINE`` -- read once at import, and set for the whole CI run -- is switched per test.
"""

from __future__ import annotations

import fnmatch
import hashlib
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import constants

from drope_check.errors import UserError
from drope_check.models.hub import (
    WEIGHT_PATTERNS,
    HubUnavailable,
    cached_snapshot,
    human_size,
    model_status,
    refusal,
)
from drope_check.models.hub_download import fetch_model
from drope_check.models.rehearsal_repos import DROPE_REPO, GRANTED_TOKEN, ROPE_REPO


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI runs with HF_HUB_OFFLINE=1 (for the hub it cannot reach); these tests reach a local one."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def wanted_files(hub_root: Path, repo: str) -> dict[str, bytes]:
    """The files of a served repo a measurement needs, read from the server's folder (the expectation
    is computed from the files themselves, not from the client's answers)."""
    folder = hub_root / repo
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if any(fnmatch.fnmatch(p.name, pattern) for pattern in WEIGHT_PATTERNS)
    }


def served(hub) -> list[str]:
    return [f"{r['method']} {r['path']}" for r in hub.requests()]


def test_the_stand_in_repos_carry_what_a_measurement_needs_and_pickles_it_must_not_download(hub_root):
    files = set(wanted_files(hub_root, ROPE_REPO))
    assert files == {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    }
    on_disk = {p.name for p in (hub_root / ROPE_REPO).iterdir()}
    assert {"pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json", "LICENSE.txt"} <= on_disk
    assert "drope.py" in {p.name for p in (hub_root / DROPE_REPO).iterdir()}


def test_status_of_a_public_repo_is_downloadable_with_the_size_of_the_needed_files(
    local_hub, hub_root, tmp_path
):
    local_hub.reset()
    status = model_status(DROPE_REPO, endpoint=local_hub.url, cache_dir=str(tmp_path), token=False)
    expected = wanted_files(hub_root, DROPE_REPO)
    assert status.state == "downloadable", status.detail
    assert status.size == sum(
        len(data) for data in expected.values()
    )  # LFS sizes for the shards, plain ones else
    assert status.n_files == len(expected) == 8
    assert human_size(status.size) in status.summary() and "downloadable" in status.summary()
    info = local_hub.requests()
    assert [r["path"] for r in info] == [
        f"/api/models/{DROPE_REPO}"
    ]  # one metadata request, nothing downloaded


def test_status_of_a_gated_repo_without_a_token_names_HF_TOKEN_and_downloads_nothing(local_hub, tmp_path):
    local_hub.reset()
    status = model_status(ROPE_REPO, endpoint=local_hub.url, cache_dir=str(tmp_path), token=False)
    assert status.state == "gated" and not status.usable
    assert "HF_TOKEN" in status.detail and ROPE_REPO in status.detail
    assert not [r for r in served(local_hub) if "/resolve/" in r or "/cdn-lfs/" in r]


def test_status_of_a_gated_repo_with_a_token_without_access_says_so(local_hub, tmp_path):
    status = model_status(ROPE_REPO, endpoint=local_hub.url, cache_dir=str(tmp_path), token="hf_not_granted")
    assert status.state == "gated"
    assert "has no access" in status.detail and "HF_TOKEN" in status.detail


def test_status_of_a_gated_repo_with_a_granted_token_is_downloadable(local_hub, tmp_path):
    status = model_status(ROPE_REPO, endpoint=local_hub.url, cache_dir=str(tmp_path), token=GRANTED_TOKEN)
    assert status.state == "downloadable", status.detail


def test_status_of_an_unknown_repo_is_not_found(local_hub, tmp_path):
    status = model_status(
        "meta-llama/Llama-2-7b-typo", endpoint=local_hub.url, cache_dir=str(tmp_path), token=False
    )
    assert status.state == "not-found" and "does not exist" in status.detail


def test_status_with_the_hub_unreachable_gives_the_reason(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status = model_status(
        DROPE_REPO, endpoint=f"http://127.0.0.1:{port}", cache_dir=str(tmp_path), token=False
    )
    assert status.state == "unreachable"
    assert f"http://127.0.0.1:{port} cannot be reached" in status.detail and "ConnectError" in status.detail


def test_status_offline_asks_nothing_of_the_hub(local_hub, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    local_hub.reset()
    status = model_status(DROPE_REPO, endpoint=local_hub.url, cache_dir=str(tmp_path), token=False)
    assert status.state == "unreachable" and "HF_HUB_OFFLINE is set" in status.detail
    assert local_hub.requests() == []


def test_fetch_downloads_only_the_needed_files_then_finds_them_without_any_request(
    local_hub, hub_root, tmp_path
):
    lines: list[str] = []
    folder = fetch_model(
        DROPE_REPO,
        endpoint=local_hub.url,
        cache_dir=str(tmp_path),
        token=False,
        progress=False,
        say=lines.append,
    )
    expected = wanted_files(hub_root, DROPE_REPO)
    assert {
        p.name: p.read_bytes() for p in folder.iterdir()
    } == expected  # byte for byte; no .bin, .py, README
    assert lines[0].startswith(
        f"{DROPE_REPO}: downloading 8 files, {human_size(sum(map(len, expected.values())))}"
    )
    downloads = [
        r for r in served(local_hub) if r.startswith("GET") and ("/resolve/" in r or "/cdn-lfs/" in r)
    ]
    assert len(downloads) == 8 and not [r for r in downloads if r.endswith((".bin", ".py", ".md"))]
    local_hub.reset()
    status = model_status(DROPE_REPO, endpoint=local_hub.url, cache_dir=str(tmp_path), token=False)
    assert (status.state, status.snapshot) == ("cached", folder)
    assert status.commit == folder.name and len(folder.name) == 40
    assert (
        fetch_model(DROPE_REPO, endpoint=local_hub.url, cache_dir=str(tmp_path), say=lines.append) == folder
    )
    assert local_hub.requests() == []  # a second run is served from the cache


def test_an_interrupted_download_is_not_taken_for_cached_and_a_rerun_downloads_only_the_rest(
    local_hub, hub_root, tmp_path
):
    folder = fetch_model(
        DROPE_REPO,
        endpoint=local_hub.url,
        cache_dir=str(tmp_path),
        token=False,
        progress=False,
        say=lambda _: None,
    )
    shard = folder / "model-00002-of-00002.safetensors"
    shard.resolve().unlink()  # the blob, as if the run had stopped before this file was complete
    shard.unlink()
    assert cached_snapshot(DROPE_REPO, cache_dir=str(tmp_path)) is None
    local_hub.reset()
    status = model_status(DROPE_REPO, endpoint=local_hub.url, cache_dir=str(tmp_path), token=False)
    assert status.state == "downloadable"
    again = fetch_model(
        DROPE_REPO,
        endpoint=local_hub.url,
        cache_dir=str(tmp_path),
        token=False,
        progress=False,
        say=lambda _: None,
        status=status,
    )
    assert again == folder and shard.read_bytes() == (hub_root / DROPE_REPO / shard.name).read_bytes()
    sha256 = hashlib.sha256(shard.read_bytes()).hexdigest()
    assert [
        r for r in served(local_hub) if r.startswith("GET") and ("/cdn-lfs/" in r or "/resolve/" in r)
    ] == [f"GET /cdn-lfs/{sha256}"]  # the seven finished files are not downloaded again


def test_fetch_of_a_gated_repo_without_a_token_refuses_before_downloading(local_hub, tmp_path):
    local_hub.reset()
    with pytest.raises(HubUnavailable, match="HF_TOKEN") as info:
        fetch_model(
            ROPE_REPO, endpoint=local_hub.url, cache_dir=str(tmp_path), token=False, say=lambda _: None
        )
    assert "\n" not in str(info.value)
    assert not [r for r in served(local_hub) if "/resolve/" in r or "/cdn-lfs/" in r]
    assert not any(tmp_path.rglob("*.safetensors"))


def test_refusal_says_a_shared_reason_once_for_every_repo(tmp_path):
    statuses = [
        model_status(repo, endpoint="http://127.0.0.1:9", cache_dir=str(tmp_path), token=False)
        for repo in (ROPE_REPO, DROPE_REPO)
    ]
    text = refusal(statuses)
    assert text.startswith(f"{ROPE_REPO} and {DROPE_REPO}: http://127.0.0.1:9 cannot be reached")
    assert text.count("cannot be reached") == 1


def test_the_server_answers_range_requests_and_the_client_resumes_with_them(local_hub, hub_root, tmp_path):
    """The client resumes a broken transfer with a Range request (``http_get(resume_size=...)``); the
    server answers 206 with the rest of the file, and the resumed bytes complete the file."""
    from huggingface_hub.file_download import http_get

    shard = (hub_root / DROPE_REPO / "model-00001-of-00002.safetensors").read_bytes()
    url = f"{local_hub.url}/cdn-lfs/{hashlib.sha256(shard).hexdigest()}"
    request = urllib.request.Request(url, headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 206 and response.read() == shard[100:200]
        assert response.headers["Content-Range"] == f"bytes 100-199/{len(shard)}"
    half = len(shard) // 2
    target = tmp_path / "shard.incomplete"
    with open(target, "wb") as fh:
        fh.write(shard[:half])
        local_hub.reset()
        http_get(url, fh, resume_size=half, expected_size=len(shard), headers={})
    assert target.read_bytes() == shard
    assert local_hub.requests()[-1]["range"] == f"bytes={half}-"


def test_a_7b_pair_runs_on_a_cpu_only_when_the_device_is_named(monkeypatch, tmp_path, capsys):
    import torch

    from drope_check import cli
    from drope_check.models.availability import gpu_refusal
    from drope_check.models.pairs import PAIRS
    from drope_check.preflight import check_needs_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pair = PAIRS["llama2-7b"]
    why = gpu_refusal(pair, None)
    assert (
        why is not None
        and "needs a CUDA device" in why
        and "--drope-device cpu" in why
        and "--device cpu" in why
    )
    assert gpu_refusal(pair, "cpu") is None and gpu_refusal(PAIRS["smollm2-135m"], None) is None
    with pytest.raises(UserError, match="needs a CUDA device"):
        check_needs_gpu(pair, None)
    # drope-check measure refuses it in one sentence before any hub request or weight load
    assert cli.main(["measure", "--pair", "llama2-7b", "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a CUDA device" in err and not (tmp_path / "m.json").exists()


def test_pair_available_offline_names_HF_HUB_OFFLINE_without_a_request(monkeypatch, local_hub):
    from drope_check.models.availability import pair_available

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", local_hub.url)
    local_hub.reset()
    ok, why = pair_available("llama2-7b", device="cpu")
    if cached_snapshot(ROPE_REPO) is None:  # this machine's own HF cache has no Llama-2 (CI never does)
        assert not ok and "HF_HUB_OFFLINE is set" in why and ROPE_REPO in why
    assert local_hub.requests() == []


def test_fetch_cli_with_the_hub_unreachable_is_one_sentence_and_exit_2(monkeypatch, tmp_path, capsys):
    import socket

    from drope_check import cli

    with socket.socket() as sock:  # a port nothing listens on, as HF_ENDPOINT
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert cli.main(["fetch", "--pair", "llama2-7b", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("drope-check fetch: error: ")
    assert f"{ROPE_REPO} and {DROPE_REPO}: {endpoint} cannot be reached (ConnectError" in err
