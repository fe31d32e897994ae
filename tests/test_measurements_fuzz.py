"""The measurements validator is the one place that decides what a file may hold: a property test.

A real measurements file is mutated at a random JSON path -- a value of another JSON type, a
number outside its field's range, an empty container, an integer too large for a float, a deleted
key -- and then judged as ``drope-check judge`` judges it. The property: the file is either refused
with a :class:`MeasurementsFileError` (or :class:`MeasurementsMismatch`) naming the mutated path,
one of its parents or one of its children (a deleted object's required key), or it is judged
exactly as the unmutated file, verdict for verdict, and its report renders. The one exception is
the schema's own: an optional field may be absent (``null`` for a scalar: not measured), so
deleting one (or nulling it) may turn the claims that read it into skips ("not measured by this
source", "measured under another protocol" for a protocol field), or leave out a piece of
provenance a verdict quotes (a commit, a protocol label) -- never change a measured value or an
outcome otherwise.

Two real files are mutated:

* ``tests/data/smollm2-135m-measurements.json``, made by this suite on the embedded pair:
  ``DROPE_CHECK_WIKITEXT=../shared/data/wikitext-2-raw/wiki.test.raw drope-check measure --pair
  smollm2-135m --out m.json --no-progress`` (CPU, float32, the faithful protocol: WikiText-2 lines
  > 100 characters, first 20, 512 tokens; every intervention), then shrunk by two edits no claim or
  report reads: each intervention's ``record.touched`` list removed and each ``heads.*_per_sequence``
  cut to its first 3 sequences (1.1 MB -> 180 kB). Judged against ``expected/smollm2-135m.toml``
  it gives 26 passes, 2 strict xfails and 4 skips (claims about a recalibrated DroPE model), so a
  mutation that changed a number a claim reads would show;
* the report author's committed files as ``drope-check import-upstream`` imports them (from the
  shared copy; skipped without it), judged as the ``author-files`` source of ``llama2-7b``: 32
  passes, 2 prose-only findings, 1 strict xfail.
"""

from __future__ import annotations

import copy
import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import NO_AUTHOR_FILES, author_files_folder
from hypothesis import given, settings
from hypothesis import strategies as st

from drope_check.claims.claim_file import ClaimSet, MeasurementsMismatch, check_measurements, load_claims
from drope_check.claims.verdicts import verdict_for
from drope_check.measurements.rules import Number, rule_at
from drope_check.measurements.validate import (
    MeasurementsFileError,
    _json_path,
    parse_measurements_json,
    validate_measurements,
)
from drope_check.report.build import build_report, pair_info, plot_marks
from drope_check.report.markdown import render_markdown
from drope_check.sources.author_files import author_files_verdict, is_author_files_import
from drope_check.sources.upstream import import_upstream

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "smollm2-135m-measurements.json"
EXPECTED = Path(__file__).parent.parent / "expected"
#: An integer no float holds (``1`` followed by 400 zeros), valid for no field.
HUGE = 10**400
#: Array indices the mutations pick from each list (the first, the second and the last): the
#: arrays' elements are alike, and thousands of per-head scores would drown every other path.
INDICES = (0, 1, -1)


@dataclass
class Target:
    """A valid measurements file, how ``judge`` judges it, and its verdicts unmutated."""

    pair: str
    data: dict[str, Any]
    claims: ClaimSet
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)
    paths: list[tuple[Any, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.baseline = self.judged(copy.deepcopy(self.data))
        self.paths = all_paths(self.data)

    def judged(self, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Judge ``data`` as ``judge`` does (validation, pair and model check, one verdict per claim,
        the author-files source for an import) and render its report (nothing of it may crash)."""
        check_measurements(self.claims, data, origin="m.json")
        if is_author_files_import(data):
            claims = [c for c in self.claims.claims if c.author_files is None or c.author_files.has_test]
            verdicts = [author_files_verdict(claim, data) for claim in claims]
        else:
            verdicts = [verdict_for(claim, data) for claim in self.claims.claims]
        info = pair_info(self.pair, data, self.claims, origin="m.json")
        assert render_markdown(
            build_report(verdicts, {self.pair: info}, {self.pair: plot_marks(self.claims)})
        )
        return {v.key: v.to_dict() for v in verdicts}


def all_paths(node: Any, parts: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every JSON path of ``node`` (lists: only :data:`INDICES`), containers included."""
    out = [parts] if parts else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += all_paths(value, parts + (key,))
    elif isinstance(node, list):
        for i in sorted({i % len(node) for i in INDICES} if node else set()):
            out += all_paths(node[i], parts + (i,))
    return out


SUITE = Target("smollm2-135m", json.loads(FIXTURE.read_text()), load_claims("smollm2-135m", EXPECTED))


@functools.cache
def author_files() -> Target:
    folder = author_files_folder()
    if folder is None:
        pytest.skip(NO_AUTHOR_FILES)
    return Target("llama2-7b", import_upstream(str(folder), "report"), load_claims("llama2-7b", EXPECTED))


def get(data: Any, parts: tuple[Any, ...]) -> Any:
    for part in parts:
        data = data[part]
    return data


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}[type(value)]


#: Values of every JSON kind; a mutation uses the ones of another kind than the value it replaces.
OTHER_KINDS: tuple[Any, ...] = ("x", True, 7, 0.5, [], {}, None, ["x"], {"x": 1})


def out_of_range(rule: Any, parts: tuple[Any, ...], data: dict[str, Any]) -> list[Any]:
    """Numbers the field's rule refuses: below ``lo``, above ``hi``, a fraction for an integer, a
    layer index at ``n_layers``."""
    if not isinstance(rule, Number):
        return []
    values: list[Any] = []
    if rule.lo is not None:
        values += [rule.lo - 1, rule.lo - 1e-3] + ([rule.lo] if rule.lo_open else [])
    if rule.hi is not None:
        values += [rule.hi + 1, rule.hi + 1e-3]
    if rule.integer:
        values.append(2.5)
    if rule.layer and parts[:1] == ("models",):
        values.append(data["models"][parts[1]]["n_layers"])
    return values


def choices_at(target: Target, parts: tuple[Any, ...]) -> list[tuple[str, Any]]:
    """Every mutation of the value at ``parts``: (kind, new value)."""
    old = get(target.data, parts)
    choices: list[tuple[str, Any]] = [("delete", None), ("huge", HUGE), ("huge", -HUGE)]
    if old is not None:
        choices.append(("null", None))
    choices += [("type", v) for v in OTHER_KINDS if kind_of(v) not in (kind_of(old), "null")]
    if isinstance(old, (list, dict)) and old:
        choices.append(("empty", type(old)()))
    return choices + [("range", v) for v in out_of_range(rule_at(parts), parts, target.data)]


@st.composite
def mutations(draw: st.DrawFn, target: Target) -> tuple[str, tuple[Any, ...], Any]:
    """(kind, path, new value): ``delete``, ``null``, ``type``, ``empty``, ``range`` or ``huge``."""
    parts = draw(st.sampled_from(target.paths))
    kind, value = draw(st.sampled_from(choices_at(target, parts)))
    return kind, parts, value


def mutate(data: dict[str, Any], kind: str, parts: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    parent = get(data, parts[:-1])
    if kind == "delete":
        del parent[parts[-1]]
    else:
        parent[parts[-1]] = value
    return data


def on_the_branch(error_path: str | None, mutated: str) -> bool:
    """``error_path`` is the mutated path, a parent of it or a child of it."""
    if error_path is None:
        return False
    short, long = sorted((error_path, mutated), key=len)
    return long == short or (long.startswith(short) and long[len(short)] in ".[")


def check_mutation(target: Target, kind: str, parts: tuple[Any, ...], value: Any) -> None:
    """The property of the module docstring, for one mutation."""
    __tracebackhide__ = True
    where = _json_path(list(parts))
    try:  # as a file: JSON NaN and integers too large for a float are caught while parsing
        data = parse_measurements_json(json.dumps(mutate(target.data, kind, parts, value)), "m.json")
        got = target.judged(data)
    except (MeasurementsFileError, MeasurementsMismatch) as exc:
        assert on_the_branch(exc.json_path, where), f"{kind} at {where}: refused naming another path: {exc}"
        assert "\n" not in str(exc) and str(exc).startswith("m.json: ")
        return
    before = target.baseline
    changed = {key: (before[key]["outcome"], v["outcome"]) for key, v in got.items() if v != before[key]}
    if kind in ("delete", "null"):  # the schema's optional fields: claims reading them may skip, nothing else
        judged_otherwise = {
            key: change
            for key, change in changed.items()
            if change[1] != "skip"
            and (change[0] != change[1] or got[key]["measured"] != before[key]["measured"])
        }
        assert not judged_otherwise, f"{kind} at {where}: {judged_otherwise}"
    else:
        assert not changed, f"{kind} {value!r} at {where} was accepted and changed verdicts: {changed}"


def test_the_fixture_is_valid_and_judged_as_recorded() -> None:
    """The unmutated files are what the docstring says: valid, and judged with passes and findings."""
    validate_measurements(SUITE.data, str(FIXTURE))
    outcomes = Counter(v["outcome"] for v in SUITE.baseline.values())
    assert outcomes == {"pass": 26, "xfail": 2, "skip": 4}, outcomes
    outcomes = Counter(v["outcome"] for v in author_files().baseline.values())
    assert outcomes == {"pass": 31, "prose-only": 7, "xfail": 7}, (
        outcomes
    )  # issue 20: later runs never a source


@settings(max_examples=250, deadline=None)
@given(mutations(SUITE))
def test_a_mutated_measurement_is_refused_at_that_path_or_judged_as_before(
    mutation: tuple[str, tuple[Any, ...], Any],
) -> None:
    check_mutation(SUITE, *mutation)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_mutated_import_of_the_authors_files_is_refused_at_that_path_or_judged_as_before(
    data: st.DataObject,
) -> None:
    target = author_files()
    check_mutation(target, *data.draw(mutations(target)))


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (
            lambda d: d["models"]["rope"].__setitem__("interventions", {}),
            "$.models.rope.interventions: is an empty object",
        ),
        (
            lambda d: d["models"]["rope"]["layers"]["sink_rate"].__setitem__(3, 1.5),
            "$.models.rope.layers.sink_rate[3]: is 1.5: expected a rate in [0, 1]",
        ),
        (
            lambda d: d["models"]["drope"]["scalars"].__setitem__("ppl_baseline", 0.5),
            "$.models.drope.scalars.ppl_baseline: is 0.5: expected a perplexity",
        ),
        (
            lambda d: d["models"]["rope"]["interventions"]["qk_disruption:report"].__setitem__("ratio", -2.0),
            '$.models.rope.interventions["qk_disruption:report"].ratio: is -2.0',
        ),
        (
            lambda d: d["models"]["rope"]["provenance"].__setitem__("n_tokens", 0),
            "$.models.rope.provenance.n_tokens: is 0: expected a positive integer",
        ),
        (
            lambda d: d["models"]["rope"]["provenance"].__setitem__("dtype", True),
            "$.models.rope.provenance.dtype: is true: expected a non-empty string",
        ),
        (
            lambda d: d["protocol"].__setitem__("padding_in_stats", 0),
            "$.protocol.padding_in_stats: is 0: expected true or false",
        ),
        (lambda d: d["texts"].__setitem__("sha256", 5), "$.texts.sha256: is 5"),
        (
            lambda d: d["models"]["rope"]["scalars"].__setitem__("peak_bos_norm_layer", 30),
            "expected a layer index in 0..29",
        ),
        (
            lambda d: d["models"]["rope"]["heads"]["sink_score"][2].__setitem__(4, -0.1),
            "$.models.rope.heads.sink_score[2][4]: is -0.1",
        ),
        (lambda d: d.__setitem__("texts", "wikitext"), "$.texts: is 'wikitext': expected the texts object"),
    ],
    ids=[
        "empty interventions",
        "rate above 1",
        "perplexity below 1",
        "negative ratio",
        "zero tokens",
        "bool dtype",
        "int for a bool",
        "number for a sha256",
        "layer index past the model",
        "negative sink score",
        "texts a string",
    ],
)
def test_each_kind_of_problem_is_one_sentence_naming_the_json_path(edit: Any, fragment: str) -> None:
    data = copy.deepcopy(SUITE.data)
    edit(data)
    with pytest.raises(MeasurementsFileError) as info:
        validate_measurements(data, "m.json")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_an_integer_too_large_for_a_float_is_named_by_its_path() -> None:
    text = json.dumps(SUITE.data).replace(
        '"peak_bos_norm_layer": 11', '"peak_bos_norm_layer": 1' + "0" * 400, 1
    )
    with pytest.raises(
        MeasurementsFileError,
        match=r"m\.json: \$\.models\.rope\.scalars\.peak_bos_norm_layer: is an "
        r"integer of 401 digits, too large for a float",
    ):
        parse_measurements_json(text, "m.json")
    with pytest.raises(MeasurementsFileError, match="no float can hold"):  # past Python's 4300-digit limit
        parse_measurements_json(
            json.dumps(SUITE.data).replace('"n_layers": 30', '"n_layers": 1' + "0" * 5000, 1), "m.json"
        )
