"""The GPU job, rehearsed on CPU: every step of .github/workflows/claims-gpu.yml from an empty HF cache.

No machine of this project has a GPU or reaches the hub, so the job that checks the report on its
own models (``meta-llama/Llama-2-7b-hf`` vs ``SakanaAI/Llama-2-7b-hf-DroPE``) would otherwise first
run on a real runner. Here it runs in every CI run, step by step, as the workflow runs it, each step
a ``drope-check`` or ``pytest`` process of its own against a local hub endpoint (``HF_ENDPOINT``: the
``local_hub`` server process of tests/conftest.py) that serves tiny random stand-ins under the real
repo ids in their published layout, the Llama-2 repo gated:

1. ``drope-check fetch --pair llama2-7b`` downloads both checkpoints with huggingface_hub's client
   into an empty ``HF_HOME``, saying the size before it starts and showing progress;
2. ``pytest claims/ --pair llama2-7b --require-models`` evaluates every llama2-7b suite claim --
   none skipped, none errored, the report's "Llama-2-7B: this suite" column filled -- without a
   single request to the hub (a second run is served from the cache). Tiny random weights fail the
   report's bands: the rehearsal asserts evaluation and structure, never passes;
3. the 4-bit step (``--quantization nf4-double``) needs CUDA and bitsandbytes: on a CPU it is refused
   before anything loads, and this module says so as a skip naming the step (where CUDA is present,
   it runs, and its measurements are judged);
4. ``drope-check audit --pair llama2-7b`` measures its variants from the cache, again without a request.

The texts come as on a GPU runner too: ``datasets.load_dataset("Salesforce/wikitext", ...)`` from
the endpoint, which serves that dataset repo built from the workplace's WikiText-2 copy (the claims
step asserts the same 20 lines as the file gives). ``datasets`` revalidates a cached dataset with a
few metadata requests on every run (its own behaviour, no download); the weights are never asked for
again. Two deliberate differences from the workflow, both named in the commands below: the device
is named (``--drope-device cpu`` / ``--device cpu``: a 7B pair runs on a CPU only when asked, see
``drope_check.models.availability.gpu_refusal``), and the audit measures 4 texts instead of 20 (the same code
path at a fifth of the forwards; the audit's numbers are tested elsewhere).

Claims whose status is ``skip`` in expected/llama2-7b.toml would be declared not measurable by this
suite and kept outside the "none skipped" rule (only with their declared reason); today there are
none: ``eager_attention_nan[llama2-7b:drope]`` is measured by the eager-fp16 probe. The report's
Methods statements (family ``method``) have no suite test at all: only the author's files judge them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import wikitext_file

from drope_check.claims.claim_file import load_claims
from drope_check.models.rehearsal_repos import DROPE_REPO, ROPE_REPO
from drope_check.report.evidence import evidence_rows

pytestmark = [pytest.mark.rehearsal, pytest.mark.xdist_group(name="rehearsal")]  # the steps share one cache

REPO = Path(__file__).resolve().parent.parent
DROPE_CHECK = [sys.executable, "-m", "drope_check.cli"]
PAIR = "llama2-7b"
SUITE_COLUMN = "Llama-2-7B: this suite"
#: Wall-clock seconds of each step (written to the terminal when the module ends).
TIMES: dict[str, float] = {}


def run(
    args: list[str], env: dict[str, str], step: str | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """One step: a child process in the repository, stdout and stderr in one stream (their order kept)."""
    start = time.perf_counter()
    done = subprocess.run(
        args,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if step is not None:
        TIMES[step] = time.perf_counter() - start
    return done


def declared_skips() -> dict[str, str]:
    """Suite keys of the llama2-7b claims declared not measurable (status skip) -> their skip reason."""
    return {c.key: c.skip_reason or "" for c in load_claims(PAIR).claims if c.status == "skip"}


def downloads(hub: Any) -> list[str]:
    return [
        r["path"]
        for r in hub.requests()
        if r["method"] == "GET" and ("/resolve/" in r["path"] or "/cdn-lfs/" in r["path"])
    ]


def weight_requests(requests: list[dict[str, Any]]) -> list[str]:
    """Requests about the model repos (anything but the WikiText dataset and the client's registry)."""
    return [
        f"{r['method']} {r['path']}"
        for r in requests
        if not r["path"].startswith(("/api/datasets/", "/datasets/", "/api/agent-harnesses"))
        and not (r["path"].startswith("/cdn-lfs/") and r["path"] in DATASET_BLOBS)
    ]


#: cdn paths of the dataset's LFS files (filled by the hub_root fixture's user below).
DATASET_BLOBS: set[str] = set()


@pytest.fixture(scope="module", autouse=True)
def dataset_blobs(hub_root: Path) -> None:
    import hashlib

    DATASET_BLOBS.update(
        f"/cdn-lfs/{hashlib.sha256(p.read_bytes()).hexdigest()}"
        for p in hub_root.glob("datasets/**/*.parquet")
    )


# ----------------------------------------------------------------------------------------------
# the steps, in the workflow's order, on one empty HF cache


@pytest.fixture(scope="module")
def rehearsal(
    local_hub: Any, hub_env: Any, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    """Step 1 (fetch) on an empty cache; the other steps are fixtures or tests of their own. At the
    end, the wall-clock seconds of each step are written to the terminal (the README quotes them)."""
    home = tmp_path_factory.mktemp("hf-home")
    env = hub_env(local_hub.url, home)
    local_hub.reset()
    fetch = run([*DROPE_CHECK, "fetch", "--pair", PAIR], env, "fetch")
    yield {
        "home": home,
        "env": env,
        "out": tmp_path_factory.mktemp("rehearsal"),
        "fetch": fetch,
        "fetch_requests": local_hub.requests(),
    }
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                "\nrehearsal of claims-gpu.yml on CPU: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in TIMES.items())
            )


@pytest.fixture(scope="module")
def claims_step(rehearsal: dict[str, Any], local_hub: Any) -> dict[str, Any]:
    local_hub.reset()
    report = rehearsal["out"] / "claims-report-llama2-7b"
    done = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "claims/",
            "--pair",
            PAIR,
            "--require-models",
            "--drope-device",
            "cpu",
            "--claims-report",
            str(report),
            "-p",
            "no:cacheprovider",
            "-q",
        ],
        rehearsal["env"],
        "claims",
    )
    doc = (
        json.loads((report / "claims-report.json").read_text())
        if (report / "claims-report.json").is_file()
        else None
    )
    return {"done": done, "doc": doc, "report": report, "requests": local_hub.requests()}


def test_step_fetch_downloads_both_checkpoints_saying_the_size_first_with_progress(
    rehearsal, local_hub, hub_root
):
    fetch = rehearsal["fetch"]
    assert fetch.returncode == 0, fetch.stdout
    out = fetch.stdout
    for repo in (ROPE_REPO, DROPE_REPO):
        size_line = out.index(f"{repo}: downloading 8 files, ")
        progress = out.index("Fetching 8 files", size_line)  # huggingface_hub's progress bar, after the size
        done = out.index(f"{repo}: downloaded to ", progress)
        assert "8/8" in out[progress:done] and "100%" in out[progress:done]
    assert out.rstrip().endswith(f"{PAIR}: ready (2 models in the HF cache)")
    paths = [r["path"] for r in rehearsal["fetch_requests"]]
    assert not [p for p in paths if p.endswith((".bin", ".py", ".md", ".txt"))]  # never pickles, code or docs
    snapshots = sorted(rehearsal["home"].glob("hub/models--*/snapshots/*"))
    assert len(snapshots) == 2
    for snapshot in snapshots:
        repo = snapshot.parent.parent.name.removeprefix("models--").replace("--", "/")
        assert {p.name for p in snapshot.iterdir()} == {
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        }
        for file in snapshot.iterdir():
            assert file.read_bytes() == (hub_root / repo / file.name).read_bytes(), file


def test_step_claims_evaluates_every_llama2_claim_without_asking_for_the_weights_again(claims_step, hub_root):
    done, doc = claims_step["done"], claims_step["doc"]
    assert doc is not None, done.stdout[-4000:]
    assert weight_requests(claims_step["requests"]) == [], "the claims step asked the hub for cached weights"
    assert done.returncode in (0, 1), done.stdout[-4000:]  # 1: some claim does not hold (tiny random weights)
    assert "NOTHING WAS CHECKED" not in done.stdout and "--require-models:" not in done.stdout
    claims = [c for c in load_claims(PAIR).claims if c.has_suite_test]  # the Methods statements have none
    suite = {
        v["key"]: v for v in doc["verdicts"] if v["pair"] == PAIR and v.get("source", "suite") == "suite"
    }
    assert set(suite) == {c.key for c in claims}, "every claim of the pair has a suite verdict"
    declared = declared_skips()
    for key, verdict in suite.items():
        if key in declared:
            assert (verdict["outcome"], verdict["reason"]) == ("skip", declared[key]), key
        else:
            assert verdict["outcome"] not in ("skip", "error"), (
                key,
                verdict["outcome"],
                verdict.get("reason"),
            )
            assert verdict["measured"] is not None, key
    info = doc["pairs"][PAIR]
    assert info["available"] is True
    if (
        hub_root / "datasets"
    ).is_dir():  # the texts came through datasets from the endpoint: the file's 20 lines
        from drope_check.engine.texts import wikitext_lines

        from_file = wikitext_lines(n=info["texts"]["n_texts"], path=wikitext_file()).to_provenance()
        assert info["texts"]["source"] == "datasets:Salesforce/wikitext:wikitext-2-raw-v1:test"
        assert info["texts"]["sha256"] == from_file["sha256"]


def test_step_claims_fills_the_reports_llama2_suite_column_with_the_measured_models(claims_step):
    doc = claims_step["doc"]
    assert doc is not None, claims_step["done"].stdout[-4000:]
    columns, rows, groups = evidence_rows(doc)
    assert SUITE_COLUMN in columns
    at = columns.index(SUITE_COLUMN) - 2  # cells follow the claim and report columns
    declared = {key.replace(f"[{PAIR}:", "[") for key in declared_skips()}
    for row in rows:
        cell = row.cells[at]
        if row.claim in declared:
            assert cell.startswith("not run [S"), (row.claim, cell)
        else:
            assert cell not in ("—", "") and "not run" not in cell and "ERROR" not in cell, (row.claim, cell)
    measured = json.loads((claims_step["report"] / "claims-report.json").read_text())["pairs"][PAIR]
    text = json.dumps(measured)
    assert ROPE_REPO in text and DROPE_REPO in text  # provenance names the hub repos, not the cache folders


def test_step_4bit_runs_where_cuda_is_and_is_refused_on_cpu_saying_so(rehearsal, local_hub):
    out = rehearsal["out"] / "m-llama2-7b-nf4.json"
    local_hub.reset()
    measure = run(
        [*DROPE_CHECK, "measure", "--pair", PAIR, "--quantization", "nf4-double", "--out", str(out)],
        rehearsal["env"],
        "4-bit",
    )
    if torch.cuda.is_available():
        assert measure.returncode == 0, measure.stdout[-4000:]
        judge = run(
            [*DROPE_CHECK, "judge", str(out), "--pair", PAIR, "--report-dir", str(rehearsal["out"] / "nf4")],
            rehearsal["env"],
        )
        assert judge.returncode in (0, 1) and "judged" in judge.stdout, judge.stdout[-4000:]
        return
    assert measure.returncode == 2, measure.stdout[-4000:]
    message = measure.stdout.strip()
    assert message.count("\n") == 0 and "--quantization nf4-double needs a CUDA device" in message
    assert local_hub.requests() == [] and not out.exists()
    pytest.skip(
        f"claims-gpu.yml step 'Measurements as upstream ran them (4-bit NF4)' cannot run on a CPU: {message}"
    )


def test_step_audit_measures_every_cpu_variant_from_the_cache(rehearsal, local_hub):
    out = rehearsal["out"] / "audit"
    local_hub.reset()
    done = run(
        [
            *DROPE_CHECK,
            "audit",
            "--pair",
            PAIR,
            "--out-dir",
            str(out),
            "--device",
            "cpu",
            "--n-texts",
            "4",
            "--no-progress",
        ],
        rehearsal["env"],
        "audit",
    )
    assert done.returncode == 0, done.stdout[-4000:]
    requests = local_hub.requests()
    assert weight_requests(requests) == []
    assert not [
        r for r in requests if r["path"] in DATASET_BLOBS
    ]  # WikiText revalidated, not downloaded again
    audit = json.loads((out / "audit.json").read_text())
    for variant in audit["variants"]:
        if variant["kind"] == "gpu" and not torch.cuda.is_available():  # 4-bit: said, not dropped
            assert variant["status"] == "skipped" and "needs a CUDA GPU" in variant["reason"], variant["name"]
        else:
            assert variant["status"] in ("measured", "derived"), (variant["name"], variant.get("reason"))
    declared = declared_skips()
    assert {c["key"] for c in audit["claims"]} == {c.key for c in load_claims(PAIR).claims}
    suite_claims = {c.key for c in load_claims(PAIR).claims if c.has_suite_test}  # not the Methods statements
    for claim in audit["claims"]:
        if claim["key"] in suite_claims and claim["key"] not in declared:
            assert claim["cells"]["suite"]["value"] is not None, claim["key"]


# ----------------------------------------------------------------------------------------------
# the pytest path on its own, and the refusals


def perplexity_claims_on_cpu(*extra: str) -> list[str]:
    """``pytest`` on the pair's perplexity suite claims with ``--require-models`` on the CPU (the quickest
    step that must load both models), plus ``extra`` options."""
    return [
        sys.executable,
        "-m",
        "pytest",
        "claims/test_perplexity_claims.py",
        "--pair",
        PAIR,
        "--require-models",
        "--drope-device",
        "cpu",
        "-k",
        "not author-files",
        *extra,
        "-p",
        "no:cacheprovider",
        "-q",
    ]


def test_pytest_downloads_what_is_missing_before_measuring(local_hub, hub_env, tmp_path):
    """Without the fetch step, ``pytest --require-models`` downloads the weights itself (never "unreachable")."""
    local_hub.reset()
    report = tmp_path / "report"
    done = run(
        perplexity_claims_on_cpu("--claims-report", str(report)),
        hub_env(local_hub.url, tmp_path / "hf"),
    )
    verdicts = json.loads((report / "claims-report.json").read_text())["verdicts"]
    assert {v["key"]: v["outcome"] in ("pass", "fail") for v in verdicts} == {
        f"ppl_baseline[{PAIR}:rope]": True,
        f"ppl_baseline[{PAIR}:drope]": True,
    }, done.stdout[-3000:]
    weights = [p for p in downloads(local_hub) if not p.startswith("/datasets/") and p not in DATASET_BLOBS]
    assert len(weights) == 16  # 8 files per model
    assert len(list((tmp_path / "hf").glob("hub/models--*/snapshots/*"))) == 2


def test_without_a_token_fetch_and_require_models_name_HF_TOKEN_before_anything_loads(
    local_hub, hub_env, tmp_path
):
    env = hub_env(local_hub.url, tmp_path / "hf", token=None)
    local_hub.reset()
    fetch = run([*DROPE_CHECK, "fetch", "--pair", PAIR], env)
    assert fetch.returncode == 2
    line = fetch.stdout.strip()
    assert (
        "\n" not in line
        and line.startswith("drope-check fetch: error: ")
        and "HF_TOKEN" in line
        and ROPE_REPO in line
    )
    pairs = run([*DROPE_CHECK, "pairs"], env)
    assert pairs.returncode == 0
    block = pairs.stdout[pairs.stdout.index(PAIR) : pairs.stdout.index("smollm2-135m")]
    assert (
        block.startswith(f"{PAIR}      gated")
        and "HF_TOKEN" in block
        and f"{DROPE_REPO}: downloadable (" in block
    )
    claims = run(
        perplexity_claims_on_cpu(),
        env,
    )
    assert claims.returncode == 1
    assert (
        f"--require-models: pair {PAIR} is not available here: {ROPE_REPO} is gated and no token is set: set HF_TOKEN"
        in claims.stdout
    )
    assert downloads(local_hub) == [] and not list((tmp_path / "hf").glob("hub/models--*/snapshots/*"))
