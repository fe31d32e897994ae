"""Writing a claims report folder: claims-report.md, claims-report.json and the plots, all or nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drope_check.atomic import atomic_write_text
from drope_check.errors import UserError
from drope_check.file_mode import output_mode
from drope_check.report.markdown import (
    render_markdown,
)
from drope_check.report.plots import (
    write_plots,
)


class ReportWriteError(UserError, OSError):
    """The report could not be written (a full disk, a folder that went away); nothing of it was left."""


def write_report(doc: Mapping[str, Any], report_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write plots, ``claims-report.json`` and ``claims-report.md`` into ``report_dir``, all or nothing.

    Every file is first written into a temporary folder inside ``report_dir`` (same file system),
    and only when all of them are complete are they renamed into place: a full disk or a folder
    that cannot be written leaves the previous report (or none) and no partial file, and raises
    :class:`ReportWriteError` naming the folder and the cause."""
    import shutil
    import tempfile

    folder = Path(report_dir)
    staging: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".claims-report.", dir=folder))
        plot_files = write_plots(doc, staging) if plots else {}
        names = [f for files in plot_files.values() for f in files]
        atomic_write_text(staging / "claims-report.json", json.dumps(doc, indent=1, sort_keys=True) + "\n")
        from drope_check.audit.render import report_section

        markdown = (
            "\n".join([render_markdown(doc, plot_files).rstrip("\n"), "", *report_section(folder)]).rstrip(
                "\n"
            )
            + "\n"
        )
        atomic_write_text(staging / "claims-report.md", markdown)
        names += ["claims-report.json", "claims-report.md"]
        for name in names:  # renames within one file system: no data is written any more
            os.chmod(staging / name, output_mode(folder / name))  # an existing file keeps its mode
            os.replace(staging / name, folder / name)
    except OSError as exc:
        raise ReportWriteError(
            f"cannot write the report into {folder} ({exc.strerror or exc}); no report file was written there: free "
            "space or choose another folder"
        ) from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return [folder / name for name in names]
