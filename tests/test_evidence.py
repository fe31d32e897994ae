"""Evidence sources per claim: the ``[claim.evidence]`` table, locating the author's files, the
evidence table of the report and its grouped skips.

Claimed: every claim of the report's pair says how the author's files speak to it; a malformed
evidence table is an error naming file, claim and key; the author's files are found beside the
repository or above it, or the skip says where the search looked; the evidence table has one row
per claim with one cell per source, and a skip reason appears once, with its count and claim ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drope_check import author_files as A
from drope_check.claim_file import ClaimsFileError, load_claims
from drope_check.evidence import evidence_rows, render_evidence_table, render_skip_groups, skip_groups
from drope_check.upstream import load_sources

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"


def test_every_claim_of_the_reports_pair_says_how_the_author_files_speak_to_it() -> None:
    claims = load_claims("llama2-7b", REPO / "expected").claims
    assert all(c.author_files is not None for c in claims)
    protocols = set(load_sources()["protocols"])
    kinds = {c.key: c.author_files.kind for c in claims}
    assert kinds["eager_attention_nan[llama2-7b:drope]"] == "suite-only"
    assert sorted(k for k, kind in kinds.items() if kind == "prose-only") == [
        "bos_mlp_ablation_ppl[llama2-7b:drope]", "bos_mlp_ablation_ratio[llama2-7b:drope]",
    ]
    for c in claims:
        assert set(c.author_files.protocols) <= protocols, c.key  # names a protocol the importer knows
        assert c.sources == (("suite",) if c.author_files.kind == "suite-only" else ("author-files", "suite"))
    claim = next(c for c in claims if c.key == "sink_rate_average[llama2-7b:rope]")
    assert claim.source_key("author-files") == "sink_rate_average[llama2-7b:rope:author-files]"
    assert claim.source_key("suite") == "sink_rate_average[llama2-7b:rope]"
    assert claim.rerun_command("suite").endswith('-k "sink_rate_average and llama2-7b and rope and not author-files"')
    # the embedded pair has no author's files: one source, ids unchanged
    assert all(c.sources == ("suite",) for c in load_claims("toy", DATA / "expected").claims)


TOY_CLAIM = '''
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
'''
HEAD = 'schema_version = 1\n[pair]\nname = "toy"\ndrope_variant = "drope"\nrun_hint = "nowhere"\n'


@pytest.mark.parametrize(("table", "key", "message"), [
    ('[claim.evidence."author-files"]\nmetric = "rope:scalars.x"\nprotocol = "p"', "evidence.author-files.protocol_note",
     "is required with metric"),
    ('[claim.evidence."author-files"]\nprotocol_note = "n"', "evidence.author-files.protocol", "is required"),
    ('[claim.evidence."author-files"]\nprotocol = ["a", "b"]', "evidence.author-files.protocol",
     "names 2 protocol(s) for 1 metric path(s)"),
    ('[claim.evidence."author-files"]\nmetric = "drope:scalars.x"\nprotocol = "p"\nprotocol_note = "n"',
     "evidence.author-files.metric", "a 'rope' claim reads rope: paths"),
    ('[claim.evidence."author-files"]\nprose_only = { nearest = [] }', "evidence.author-files.prose_only.nearest",
     "non-empty list"),
    ('[claim.evidence."author-files"]\nprose_only = { nearest = ["rope:x"] }\nsuite_only = "why"',
     "evidence.author-files", "exclude each other"),
    ('[claim.evidence."author-files"]\nprotocol = "p"\nunknown = 1', "evidence.author-files.unknown", "is not a key"),
    ('[claim.evidence.mirror]\nprotocol = "p"', "evidence.mirror", "is not an evidence source"),
])
def test_a_malformed_evidence_table_names_file_claim_and_key(tmp_path: Path, table: str, key: str, message: str) -> None:
    (tmp_path / "toy.toml").write_text(HEAD + TOY_CLAIM + table + "\n")
    with pytest.raises(ClaimsFileError) as info:
        load_claims("toy", tmp_path)
    assert info.value.key == key and info.value.claim_id == "ppl_baseline[toy:rope]"
    assert message in str(info.value) and str(tmp_path / "toy.toml") in str(info.value)


def test_the_author_files_are_found_above_the_repository_or_the_skip_says_where_it_looked(tmp_path: Path, monkeypatch) -> None:
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
    base = {"key": key, "id": cid, "model": model, "pair": pair, "outcome": outcome, "source": source,
            "status": "claim", "expected": 0.978, "measured": None, "reason": ""}
    base.update(kw)
    return base


def test_the_evidence_table_has_one_row_per_claim_and_one_cell_per_source() -> None:
    gpu = "pair llama2-7b is not available here: no GPU. To run its claims: ..."
    verdicts = [
        _v("sink_rate_average[llama2-7b:rope:author-files]", "llama2-7b", "pass", "author-files", measured=0.978125,
           source_commit="90f8e3c73617cd4fa8986a8772c3cca53a570354", source_protocol="10 prompts, FP4, no rotary"),
        _v("sink_rate_average[llama2-7b:rope]", "llama2-7b", "skip", reason=gpu),
        _v("sink_rate_average[smollm2-135m:rope]", "smollm2-135m", "pass", status="golden", expected=0.91, measured=0.9102),
        _v("bos_mlp_ablation_ppl[llama2-7b:drope:author-files]", "llama2-7b", "prose-only", "author-files", expected=18.5,
           nearest=[{"path": "drope:x", "value": 4.2902, "commit": "90f8e3c7", "protocol": "5 prompts, NF4"},
                    {"path": "drope:y", "value": None}]),
        _v("bos_mlp_ablation_ppl[llama2-7b:drope]", "llama2-7b", "skip", expected=18.5, reason=gpu),
        _v("bos_mlp_ablation_ppl[smollm2-135m:drope]", "smollm2-135m", "skip", expected=18.5,
           reason="about a recalibrated DroPE model"),
        _v("bos_mlp_ablation_ratio[smollm2-135m:rope]", "smollm2-135m", "xfail", status="does-not-generalise",
           expected=1249.0, measured=3.1),
    ]
    doc = {"pairs": {"llama2-7b": {}, "smollm2-135m": {}}, "verdicts": verdicts}
    columns, rows, groups = evidence_rows(doc)
    assert columns == ["claim", "report", "author's files", "this suite on llama2-7b", "this suite on smollm2-135m"]
    assert [(r.claim, r.report_value, *r.cells) for r in rows] == [
        ("sink_rate_average[rope]", "0.978", "0.9781 @90f8e3c (10 prompts, FP4, no rotary): PASS", "not run [S1]",
         "0.9102 (golden 0.91): PASS"),
        ("bos_mlp_ablation_ppl[drope]", "18.5", "**prose only**: no committed number; nearest 4.29 (5 prompts, NF4 @90f8e3c)",
         "not run [S1]", "not run [S2]"),
        ("bos_mlp_ablation_ratio[rope]", "1249", "—", "—", "does not generalise: 3.1"),
    ]
    assert [(g.label, g.reason, len(g.keys)) for g in groups] == [
        ("S1", gpu, 2), ("S2", "about a recalibrated DroPE model", 1)]
    md = "\n".join(render_evidence_table(doc) + render_skip_groups(groups))
    assert md.count(gpu) == 1
    assert f"- **S1** (2): {gpu} — sink_rate_average[llama2-7b:rope], bos_mlp_ablation_ppl[llama2-7b:drope]" in md
    assert render_evidence_table({"pairs": {}, "verdicts": []}) == [] and skip_groups([]) == []
