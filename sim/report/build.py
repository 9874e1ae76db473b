"""Assemble a report: every applicable figure, its table, and ``report.md``, written at once.

The report is built in a hidden temporary folder beside the destination and renamed into place
only when every figure and table is written, so a failure leaves no partial report (and an
earlier report, if any, stays until the new one replaces it).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from moe_offload_lab.sim.report.figures import (
    breakdown_section,
    hit_ratio_section,
    latency_section,
    pareto_section,
    speedup_section,
)
from moe_offload_lab.sim.report.prefetch import prefetch_section
from moe_offload_lab.sim.report.sources import REPORT_DIR, Source, load_folder, load_study
from moe_offload_lab.sim.report.style import Section, markdown_table, save
from moe_offload_lab.sim.report.timeline import timeline_section
from moe_offload_lab.sim.report.tuning import history_section, policy_section, study_pareto_section
from moe_offload_lab.traces.errors import ConfigError

Builder = Callable[[Source], "Section | str"]
RUN_FIGURES: tuple[Builder, ...] = (speedup_section, hit_ratio_section, latency_section,
                                    breakdown_section, pareto_section, prefetch_section,
                                    timeline_section)
STUDY_FIGURES: tuple[Builder, ...] = (study_pareto_section, history_section, policy_section,
                                      hit_ratio_section)


def build_sections(source: Source, timeline_steps: int = 2, timeline_run: str | None = None
                   ) -> tuple[list[Section], list[str]]:
    """Every figure that applies to ``source``, and why the others were left out.
    ``timeline_run``: the label of the run the timeline excerpt draws (default: the most
    eventful one)."""
    builders = STUDY_FIGURES if source.kind == "study" else RUN_FIGURES
    if timeline_run is not None and source.kind == "study":
        raise ConfigError("--timeline-run applies to run, comparison and sweep folders, not to "
                          "a tuning study")
    sections, skipped = [], []
    for builder in builders:
        if builder is timeline_section:
            result = timeline_section(source, timeline_steps, timeline_run)
        else:
            result = builder(source)
        name = builder.__name__.removesuffix("_section").replace("_", " ")
        if isinstance(result, str):
            skipped.append(f"{name}: {result}")
        else:
            sections.append(result)
    return sections, skipped


def render_markdown(source: Source, sections: list[Section], skipped: list[str]) -> str:
    """``report.md``: a heading per figure with its image, explanation and table."""
    lines = [f"# Report: {source.title}", "",
             f"{len(source.runs)} {'complete trials' if source.kind == 'study' else 'runs'}; "
             f"figures: {', '.join(s.title.lower() for s in sections)}.", ""]
    if source.notes:
        lines += [*(f"- {note}" for note in source.notes), ""]
    for section in sections:
        lines += [f"## {section.title}", "", f"![{section.title}]({section.name}.png)", "",
                  section.text, "", markdown_table(section.table),
                  f"Table: [{section.name}.csv]({section.name}.csv)", ""]
    if skipped:
        lines += ["## Not drawn", "", *(f"- {reason}" for reason in skipped), ""]
    return "\n".join(lines)


def _write_into(folder: Path, source: Source, sections: list[Section],
                skipped: list[str]) -> None:
    for section in sections:
        save(section.figure, folder / f"{section.name}.png")
        section.table.to_csv(folder / f"{section.name}.csv", index=False)
    (folder / "report.md").write_text(render_markdown(source, sections, skipped),
                                      encoding="utf-8")


def _replace(new: Path, out: Path) -> None:
    """Move the finished folder ``new`` to ``out``, replacing an earlier report."""
    old = None
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"{out}: exists and is not a folder")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.replace(old / out.name)
    new.replace(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_report(folder: str | Path | None = None, out: str | Path | None = None, *,
                 storage: str | None = None, study: str | None = None,
                 timeline_steps: int = 2, timeline_run: str | None = None) -> Path:
    """Write the report of ``folder`` (or of ``study`` in ``storage``) into ``out`` (default
    ``<folder>/report``); returns the path of ``report.md``. ``timeline_run`` picks the run of
    the timeline excerpt by label. Raises ConfigError on bad input, before anything is
    written."""
    if storage or study:
        if not (storage and study):
            raise ConfigError("--storage and --study go together")
        if out is None:
            out = _study_report_dir(folder, storage, study)
        source = load_study(storage, study)
    elif folder is None:
        raise ConfigError("give a folder, or --storage URL --study NAME")
    else:
        source = load_folder(folder)
        out = Path(folder) / REPORT_DIR if out is None else out
    return report_source(source, out, timeline_steps, timeline_run)


def _study_report_dir(folder: str | Path | None, storage: str, study: str) -> Path:
    """``<folder>/report``, else the study's default folder's - only when ``storage`` is that
    folder's SQLite file: another storage's study of the same name must not overwrite it."""
    from moe_offload_lab.sim.tune.storage import default_storage, mask

    if folder:
        return Path(folder) / REPORT_DIR
    base = Path("outputs/tune") / study
    if storage != default_storage(base):
        raise ConfigError(f"give -o DIR for study {study!r} of {mask(storage)}: "
                          f"{base / REPORT_DIR} is the report of the study in "
                          f"{base / 'study.db'}")
    return base / REPORT_DIR


def report_source(source: Source, out: str | Path, timeline_steps: int = 2,
                  timeline_run: str | None = None) -> Path:
    """Write the report of an already loaded :class:`Source` into ``out``; returns the path of
    ``report.md``."""
    if not isinstance(timeline_steps, int) or timeline_steps < 1:
        raise ConfigError(f"--timeline-steps must be a positive integer, got {timeline_steps!r}")
    sections, skipped = build_sections(source, timeline_steps, timeline_run)
    if not sections:
        raise ConfigError(f"{source.where}: nothing to draw ({'; '.join(skipped)})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        _write_into(tmp, source, sections, skipped)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "report.md"
