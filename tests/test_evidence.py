"""Evidence sources per claim: the ``[claim.evidence]`` table, locating the author's files, the
evidence table of the report and its grouped skips.

Claimed: every claim of the report's pair says how the author's files speak to it; a malformed
evidence table is an error naming file, claim and key; the author's files are found beside the
repository or above it, or the skip says where the search looked; the evidence table has one row
per claim (and model side) and one column per model family and source, each cell the value and
what it means (holds / does not hold / does not generalise / golden / about a recalibrated DroPE),
a skip reason appears once, with its count and claim ids; a ratio is written as one (``1.00x``);
a suite-only claim says what the author's files hold and why it cannot judge the claim.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from drope_check.claims.bands import fmt
from drope_check.claims.claim_file import ClaimsFileError, load_claims
from drope_check.claims.evidence_spec import AuthorFilesEvidence
from drope_check.claims.verdicts import skipped_verdict
from drope_check.report.evidence import evidence_rows, render_evidence_table, render_skip_groups, skip_groups
from drope_check.report.markdown import render_markdown
from drope_check.sources import author_files as A
from drope_check.sources.table import load_sources

REPO = Path(__file__).resolve().parent.parent
SUITE_ONLY = "the committed files hold DroPE's layer-1 q/k norms, not a count of non-finite values"
DATA = Path(__file__).parent / "data"


def test_every_claim_of_the_reports_pair_says_how_the_author_files_speak_to_it() -> None:
    claims = load_claims("llama2-7b", REPO / "expected").claims
    assert all(c.author_files is not None for c in claims)
    protocols = set(load_sources()["protocols"])
    kinds = {c.key: c.author_files.kind for c in claims}
    assert (
        "suite-only" not in kinds.values()
    )  # eager_attention_nan: the files hold 31 non-finite layers (issue 20)
    # no committed run made by the report's commit holds these numbers; the WikiText-lines run that
    # "supported" the first four was committed after the report (issue 20)
    assert sorted(k for k, kind in kinds.items() if kind == "prose-only") == [
        "bos_mlp_ablation_ppl[llama2-7b:drope]",
        "bos_mlp_ablation_ppl[llama2-7b:rope]",
        "bos_mlp_ablation_ratio[llama2-7b:drope]",
        "bos_mlp_ablation_ratio[llama2-7b:rope]",
        "methods_ablation_confirmed[llama2-7b:rope]",
        "ppl_baseline[llama2-7b:drope]",
        "ppl_baseline[llama2-7b:rope]",
    ]
    for c in claims:
        assert set(c.author_files.protocols) <= protocols, c.key  # names a protocol the importer knows
        if c.family == "method":  # a Methods statement: judged on the author's files only
            assert c.sources == ("author-files",) and not c.has_suite_test, c.key
        else:
            assert c.sources == ("author-files", "suite"), c.key
    claim = next(c for c in claims if c.key == "sink_rate_average[llama2-7b:rope]")
    assert claim.source_key("author-files") == "sink_rate_average[llama2-7b:rope:author-files]"
    assert claim.source_key("suite") == "sink_rate_average[llama2-7b:rope]"
    assert claim.rerun_command("suite").endswith(
        '-k "sink_rate_average and llama2-7b and rope and not author-files"'
    )
    # the embedded pair has no author's files: one source, ids unchanged
    assert all(c.sources == ("suite",) for c in load_claims("toy", DATA / "expected").claims)


TOY_CLAIM = """
[[claim]]
id = "ppl_baseline"
model = "rope"
family = "perplexity"
sentence = "RoPE baseline perplexity is 10.2."
metric = "rope:scalars.ppl_baseline"
value = 10.2
status = "claim"
band = { kind = "relative", rel = 0.05 }
rationale = "Toy band."
provenance = { source = "prose-only", text_set = "toy lines" }
"""
HEAD = 'schema_version = 1\n[pair]\nname = "toy"\ndrope_variant = "drope"\nrun_hint = "nowhere"\n'


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        (
            '[claim.evidence."author-files"]\nmetric = "rope:scalars.x"\nprotocol = "p"',
            "evidence.author-files.protocol_note",
            "is required with metric",
        ),
        (
            '[claim.evidence."author-files"]\nprotocol_note = "n"',
            "evidence.author-files.protocol",
            "is required",
        ),
        (
            '[claim.evidence."author-files"]\nprotocol = ["a", "b"]',
            "evidence.author-files.protocol",
            "names 2 protocol(s) for 1 metric path(s)",
        ),
        (
            '[claim.evidence."author-files"]\nmetric = "drope:scalars.x"\nprotocol = "p"\nprotocol_note = "n"',
            "evidence.author-files.metric",
            "a 'rope' claim reads rope: paths",
        ),
        (
            '[claim.evidence."author-files"]\nprose_only = { nearest = [] }',
            "evidence.author-files.prose_only.nearest",
            "non-empty list",
        ),
        (
            '[claim.evidence."author-files"]\nprose_only = { nearest = ["rope:x"] }\nsuite_only = "why"',
            "evidence.author-files",
            "exclude each other",
        ),
        (
            '[claim.evidence."author-files"]\nprotocol = "p"\nunknown = 1',
            "evidence.author-files.unknown",
            "is not a key",
        ),
        ('[claim.evidence.mirror]\nprotocol = "p"', "evidence.mirror", "is not an evidence source"),
    ],
)
def test_a_malformed_evidence_table_names_file_claim_and_key(
    tmp_path: Path, table: str, key: str, message: str
) -> None:
    (tmp_path / "toy.toml").write_text(HEAD + TOY_CLAIM + table + "\n")
    with pytest.raises(ClaimsFileError) as info:
        load_claims("toy", tmp_path)
    assert info.value.key == key and info.value.claim_id == "ppl_baseline[toy:rope]"
    assert message in str(info.value) and str(tmp_path / "toy.toml") in str(info.value)


def test_the_author_files_are_found_above_the_repository_or_the_skip_says_where_it_looked(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv(A.ENV_VAR, raising=False)
    repo = tmp_path / "wt" / "clone"
    repo.mkdir(parents=True)
    with pytest.raises(A.AuthorFilesUnavailable) as info:
        A.locate_upstream(None, [repo])
    assert str(tmp_path / "wt" / "shared" / "data" / "upstream-results") in str(info.value)
    assert "--upstream PATH or DROPE_CHECK_UPSTREAM=PATH" in str(info.value)
    shared = tmp_path / "shared" / "data" / "upstream-results"  # two levels up: a worktree under wt/
    shared.mkdir(parents=True)
    assert A.locate_upstream(None, [repo]) == shared
    beside = tmp_path / "wt" / "shared" / "data" / "upstream-results"  # ../shared wins: nearest first
    beside.mkdir(parents=True)
    assert A.locate_upstream(None, [repo]) == beside
    monkeypatch.setenv(A.ENV_VAR, str(shared))
    assert A.locate_upstream(None, [repo]) == shared
    assert A.locate_upstream(str(beside), [repo]) == beside  # --upstream wins over the environment
    with pytest.raises(A.AuthorFilesBroken, match="--upstream .*nowhere: not a folder"):
        A.locate_upstream(str(tmp_path / "nowhere"), [repo])


def _v(key: str, pair: str, outcome: str, source: str = "suite", **kw) -> dict:
    cid, rest = key.split("[")
    model = rest.split(":")[1].rstrip("]")
    base = {
        "key": key,
        "id": cid,
        "model": model,
        "pair": pair,
        "outcome": outcome,
        "source": source,
        "status": "claim",
        "expected": 0.978,
        "measured": None,
        "reason": "",
    }
    base.update(kw)
    return base


GPU = "pair llama2-7b is not available here: no GPU. To run its claims: ..."
RECALIBRATED = "about a recalibrated DroPE model"
VERDICTS = [
    _v(
        "sink_rate_average[llama2-7b:rope:author-files]",
        "llama2-7b",
        "pass",
        "author-files",
        measured=0.978125,
        source_commit="90f8e3c73617cd4fa8986a8772c3cca53a570354",
        source_protocol="10 prompts, FP4, no rotary",
        order=1,
    ),
    _v("sink_rate_average[llama2-7b:rope]", "llama2-7b", "skip", reason=GPU, order=1),
    _v(
        "sink_rate_average[smollm2-135m:rope]",
        "smollm2-135m",
        "pass",
        status="golden",
        expected=0.91,
        measured=0.9102,
        order=1,
    ),
    _v(
        "bos_mlp_ablation_ppl[llama2-7b:drope:author-files]",
        "llama2-7b",
        "prose-only",
        "author-files",
        expected=18.5,
        nearest=[
            {"path": "drope:x", "value": 4.2902, "commit": "90f8e3c7", "protocol": "5 prompts, NF4"},
            {"path": "drope:y", "value": None},
        ],
        order=2,
    ),
    _v("bos_mlp_ablation_ppl[llama2-7b:drope]", "llama2-7b", "skip", expected=18.5, reason=GPU, order=2),
    _v(
        "bos_mlp_ablation_ppl[smollm2-135m:drope]",
        "smollm2-135m",
        "skip",
        status="skip",
        expected=18.5,
        reason=RECALIBRATED,
        order=2,
    ),
    _v(
        "bos_mlp_ablation_ratio[llama2-7b:rope]",
        "llama2-7b",
        "skip",
        expected=1249.0,
        reason=GPU,
        ratio=True,
        order=3,
    ),
    _v(
        "bos_mlp_ablation_ratio[smollm2-135m:rope]",
        "smollm2-135m",
        "xfail",
        status="does-not-generalise",
        expected=1249.0,
        measured=5.31,
        ratio=True,
        order=3,
    ),
    _v(
        "bos_mlp_ablation_ratio[gemma3-270m:rope]",
        "gemma3-270m",
        "pass",
        expected=1249.0,
        measured=412.0,
        ratio=True,
        order=3,
    ),
    _v(
        "ppl_baseline[smollm2-135m:rope]",
        "smollm2-135m",
        "pass",
        status="golden",
        expected=42.56,
        measured=42.56,
        order=0,
    ),
    _v(
        "ppl_baseline[gemma3-270m:rope]",
        "gemma3-270m",
        "skip",
        status="golden",
        expected=None,
        reason="golden not yet measured",
        order=0,
    ),
    _v(
        "valley_entropy_ratio[smollm2-135m:pair]",
        "smollm2-135m",
        "skip",
        status="does-not-generalise",
        expected=11.05,
        recorded=0.91,
        ratio=True,
        reason="another text set",
        order=9,
    ),
    _v(
        "qk_disruption_ratio[gemma3-270m:drope]",
        "gemma3-270m",
        "fail",
        expected=1.29,
        measured=3.0,
        ratio=True,
        order=4,
    ),
]


def test_one_row_per_claim_one_column_per_family_and_source() -> None:
    doc = {
        "pairs": {"smollm2-135m": {}, "llama2-7b": {}, "gemma3-270m": {}},
        "verdicts": list(reversed(VERDICTS)),
        "author_files": {"llama2-7b": {"upstream": {"era": "report"}}},
    }
    columns, rows, groups = evidence_rows(doc)
    assert columns == [
        "claim",
        "report",
        "Llama-2-7B: author's files (report era)",
        "Llama-2-7B: this suite",
        "SmolLM2-135M: this suite",
        "Gemma-3-270M: this suite",
    ]
    # rows in the report's pair's claim order first (whatever the input order), then claims only others have
    assert [(r.claim, r.report_value, *r.cells) for r in rows] == [
        (
            "sink_rate_average[rope]",
            "0.978",
            "0.9781 @90f8e3c (10 prompts, FP4, no rotary): PASS",
            "not run [S1]",
            "0.9102 (golden 0.91): PASS",
            "—",
        ),
        (
            "bos_mlp_ablation_ppl[drope]",
            "18.5",
            "**prose only**: no committed number; nearest 4.29 (5 prompts, NF4 @90f8e3c)",
            "not run [S1]",
            "about a recalibrated DroPE: n/a [S2]",
            "—",
        ),
        (
            "bos_mlp_ablation_ratio[rope]",
            "1249x",
            "—",
            "not run [S1]",
            "5.31x: does not generalise",
            "412x: holds",
        ),
        ("ppl_baseline[rope]", "—", "—", "—", "42.56 (golden 42.56): PASS", "golden: not run [S4]"),
        (
            "valley_entropy_ratio[pair]",
            "11.05x",
            "—",
            "—",
            "not run [S3] (recorded 0.91x: does not generalise)",
            "—",
        ),
        ("qk_disruption_ratio[drope]", "1.29x", "—", "—", "—", "3.00x: does not hold"),
    ]
    # each reason once, numbered in the order a reader meets them in the table (the report's pair first)
    assert [(g.label, g.reason, len(g.keys)) for g in groups] == [
        ("S1", GPU, 3),
        ("S2", RECALIBRATED, 1),
        ("S3", "another text set", 1),
        ("S4", "golden not yet measured", 1),
    ]
    md = "\n".join(render_evidence_table(doc) + render_skip_groups(groups))
    assert md.count(GPU) == 1
    assert (
        f"- **S1** (3): {GPU} — sink_rate_average[llama2-7b:rope], bos_mlp_ablation_ppl[llama2-7b:drope], "
        "bos_mlp_ablation_ratio[llama2-7b:rope]"
    ) in md
    assert render_evidence_table({"pairs": {}, "verdicts": []}) == [] and skip_groups([]) == []


def test_cells_say_what_each_verdict_means() -> None:
    doc = {
        "pairs": {"llama2-7b": {}},
        "verdicts": [
            _v(
                "a[llama2-7b:rope]",
                "llama2-7b",
                "xpass",
                status="does-not-generalise",
                expected=2.0,
                measured=2.1,
            ),
            _v("b[llama2-7b:rope]", "llama2-7b", "error", reason="metric path missing"),
            _v(
                "c[llama2-7b:rope]",
                "llama2-7b",
                "regenerated",
                status="golden",
                measured=3.0,
                reason="golden regenerated",
            ),
            _v("d[llama2-7b:rope]", "llama2-7b", "fail", status="golden", expected=1.0, measured=1.5),
            _v(
                "e[llama2-7b:rope:author-files]",
                "llama2-7b",
                "xfail",
                "author-files",
                measured=512,
                source_commit="16a5164aa",
                source_protocol="NF4",
            ),
            _v("f[llama2-7b:rope:author-files]", "llama2-7b", "skip", "author-files", reason="no copy found"),
        ],
    }
    _, rows, _ = evidence_rows(doc)
    assert [(r.claim, *r.cells) for r in rows] == [
        ("a[rope]", "—", "2.1: now holds (XPASS: the strict xfail fails)"),
        ("b[rope]", "—", "ERROR (see Failures)"),
        ("c[rope]", "—", "golden: regenerated [S1]"),
        ("d[rope]", "—", "1.5 (golden 1): FAIL"),
        ("e[rope]", "512 @16a5164 (NF4): contradicted by the files (xfail)", "—"),
        ("f[rope]", "not judged [S2]", "—"),
    ]


def test_a_ratio_is_written_as_a_ratio_and_a_count_is_not() -> None:
    assert fmt(1.0) == "1" and fmt(2) == "2"  # a layer index or a count stays bare
    assert [fmt(x, ratio=True) for x in (1.0, 1, 6.7, 1.015, 1249.0, 11.05, 0.5, float("inf"))] == [
        "1.00x",
        "1.00x",
        "6.70x",
        "1.015x",
        "1249x",
        "11.05x",
        "0.50x",
        "inf",
    ]
    assert fmt([1249.0, 1.0], ratio=True) == "[1249x, 1.00x]"
    claims = load_claims("llama2-7b", REPO / "expected")
    # a ratio: every path reads a .ratio field (perplexity over baseline), or combine = "ratio"
    assert sorted(c.key for c in claims.claims if c.is_ratio) == [
        "bos_mlp_ablation_only_rope_collapses[llama2-7b:pair]",
        "bos_mlp_ablation_ratio[llama2-7b:drope]",
        "bos_mlp_ablation_ratio[llama2-7b:rope]",
        "drope_bos_not_critical[llama2-7b:drope]",
        "methods_ablation_confirmed[llama2-7b:rope]",
        "peak_bos_norm_layer_plateau[llama2-7b:pair]",
        "qk_disruption_drope_more_robust[llama2-7b:pair]",
        "qk_disruption_ratio[llama2-7b:drope]",
        "qk_disruption_ratio[llama2-7b:rope]",
        "valley_entropy_ratio[llama2-7b:pair]",
    ]
    # the report's "1.00x (no change)": the report column, the summary and the claim's section all say 1.00x
    claim = claims.get("bos_mlp_ablation_ratio", "drope")
    doc = {
        "pairs": {"llama2-7b": {}},
        "verdicts": [skipped_verdict(claim, GPU).to_dict()],
        "summary": {"skip": 1},
        "tool": {"version": "0"},
    }
    _, rows, _ = evidence_rows(doc)
    assert rows[0].report_value == "1.00x"
    md = render_markdown(doc)
    assert "| bos_mlp_ablation_ratio[llama2-7b:drope] | - | 1.00x |" in md and "- report value: 1.00x" in md


def test_a_suite_only_claim_says_what_the_author_files_hold() -> None:
    # no shipped claim is suite only since issue 20 (the eager NaN count is imported): a claim made one
    claim = dataclasses.replace(
        load_claims("llama2-7b", REPO / "expected").get("eager_attention_nan", "drope"),
        author_files=AuthorFilesEvidence(kind="suite-only", reason=SUITE_ONLY),
    )
    assert claim.sources == ("suite",)  # no author-files test: its cell would be empty without the note
    author = skipped_verdict(
        load_claims("llama2-7b", REPO / "expected").get("sink_rate_average", "rope"), GPU
    ).to_dict()
    author.update(
        key="sink_rate_average[llama2-7b:rope:author-files]",
        source="author-files",
        outcome="pass",
        measured=0.978125,
        source_commit="90f8e3c",
        source_protocol="p",
    )
    doc = {
        "pairs": {"llama2-7b": {}},
        "verdicts": [author, skipped_verdict(claim, GPU).to_dict()],
        "summary": {"skip": 1, "pass": 1},
        "tool": {"version": "0"},
    }
    columns, rows, _ = evidence_rows(doc)
    assert columns[2] == "Llama-2-7B: author's files"
    row = next(r for r in rows if r.claim == "eager_attention_nan[drope]")
    assert row.cells == (f"suite only: {SUITE_ONLY}", "not run [S1]")
    assert (
        "- the author's files: suite only (no test of that source): the committed files hold"
        in render_markdown(doc)
    )


def test_the_report_has_one_cross_family_table() -> None:
    full = {
        "family": "intervention",
        "sentence": "s",
        "metrics": [],
        "band": "b",
        "rationale": "r",
        "provenance": {},
    }
    doc = {
        "pairs": {"smollm2-135m": {}, "gemma3-270m": {}},
        "verdicts": [{**full, **v} for v in VERDICTS[7:9]],
        "summary": {"pass": 1, "xfail": 1},
        "tool": {"version": "0"},
    }
    text = render_markdown(doc)
    assert text.count("| claim | report |") == 1 and "## Generalisation" not in text
    assert text.index("## Evidence") < text.index("## Summary") < text.index("## Pairs")
    assert "| bos_mlp_ablation_ratio[rope] | 1249x | 5.31x: does not generalise | 412x: holds |" in text
