"""Session end: the verdicts of every test (xdist workers included) gathered into the claims report, the regenerated claim files and the terminal summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drope_check.claims.regen import regen_expected, updates_from_verdicts
from drope_check.pytest_plugin.session import (
    AUTHOR_FILES_PROPERTY,
    CLAIM_PROPERTY,
    PAIR_PROPERTY,
    SessionState,
    claims_report_dir,
    is_worker,
    measure_options,
    pair_available_here,
)


class Aggregator:
    """Registered per session: collects verdicts from reports and writes the report (controller only)."""

    def __init__(self, state: SessionState) -> None:
        self.state = state
        self.regenerated: list[str] | None = None
        self.report_dir: Path | None = None
        self.report_error: str | None = None
        self.audit_lines: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """On the controller this sees every worker's reports, with their user properties."""
        for name, value in getattr(report, "user_properties", ()):
            if name == CLAIM_PROPERTY:
                self.state.verdicts[report.nodeid] = json.loads(value)
            elif name == AUTHOR_FILES_PROPERTY:
                info = json.loads(value)
                self.state.author_files.setdefault(info["pair"], info)
            elif name == PAIR_PROPERTY:
                info = json.loads(value)
                old = self.state.pairs.get(info["pair"])
                if old is None or (info.get("available") and not old.get("available")):
                    self.state.pairs[info["pair"]] = info

    def verdicts(self) -> list[dict[str, Any]]:
        from drope_check.report.build import sort_verdicts

        return sort_verdicts(self.state.verdicts.values())

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        config = session.config
        if is_worker(config) or not self.state.verdicts:
            return
        verdicts = self.verdicts()
        if self.state.regen:
            self.regenerated = _write_regen(self.state, verdicts)
        out = config.getoption("drope_claims_report")
        audit_pairs = config.getoption("drope_audit_pairs") or []
        if config.getoption("drope_audit") or audit_pairs:
            from drope_check.audit.commands import audit_session

            judged = sorted({v["pair"] for v in verdicts})
            chosen = [p for p in judged if p in audit_pairs] if audit_pairs else judged
            options = measure_options(config)
            device = getattr(options, "device", None)
            self.audit_lines = audit_session(
                config, self.state, chosen, out, options, lambda pair: pair_available_here(pair, device)
            )
            if any(line.startswith("audit failed") for line in self.audit_lines):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if out:
            from drope_check.report.build import build_report, plot_marks
            from drope_check.report.write import ReportWriteError, write_report

            pairs = sorted({v["pair"] for v in verdicts})
            infos = {
                p: self.state.pairs.get(
                    p, {"pair": p, "available": False, "reason": "no information recorded"}
                )
                for p in pairs
            }
            marks = {p: plot_marks(self.state.claim_set(p)) for p in pairs}
            doc = build_report(verdicts, infos, marks, author_files=self.state.author_files)
            report_dir = claims_report_dir(config)
            try:
                write_report(doc, report_dir)
                self.report_dir = report_dir
            except ReportWriteError as exc:  # e.g. a full disk: one sentence, and no half-written report
                self.report_error = f"--claims-report: {exc}"
                session.exitstatus = pytest.ExitCode.USAGE_ERROR

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if is_worker(config) or not self.state.verdicts:
            return
        from drope_check.report.terminal import terminal_lines

        writer = getattr(terminalreporter, "_tw", None)
        width = writer.fullwidth if writer is not None else 120
        terminalreporter.section("drope_check claims")
        from drope_check.report.terminal import unchecked_pair_lines

        for line in terminal_lines(self.verdicts(), width=width):
            terminalreporter.write_line(line)
        available = {p for p, info in self.state.pairs.items() if info.get("available")}
        for line in unchecked_pair_lines(self.verdicts(), available):
            terminalreporter.write_line(line, red=True, bold=True)
        if self.regenerated is not None:
            terminalreporter.write_line(
                f"--regen-expected: rewrote {len(self.regenerated)} measured value(s): "
                f"{', '.join(self.regenerated) or 'none'}"
            )
        for line in self.audit_lines:
            terminalreporter.write_line(line)
        from drope_check.report.markdown import provenance_notes

        for pair, info in sorted(self.state.pairs.items()):
            for note in provenance_notes(info):
                terminalreporter.write_line(f"pair {pair}: {note}", yellow=True)
        if self.report_dir is not None:
            terminalreporter.write_line(f"claims report: {self.report_dir / 'claims-report.md'}")
        if self.report_error is not None:
            terminalreporter.write_line(self.report_error, red=True, bold=True)


def _write_regen(state: SessionState, verdicts: list[dict[str, Any]]) -> list[str]:
    changed: list[str] = []
    for pair, updates in sorted(updates_from_verdicts(verdicts).items()):
        changed += regen_expected(state.claim_set(pair).path, updates)
    return changed
