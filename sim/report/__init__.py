"""``moe-report``: figures and a markdown summary of simulator and tuning outputs.

Give it a folder and it works out what the folder holds (:mod:`sim.report.sources`): a
``moe-sim --multirun`` sweep, a comparison (``compare.csv`` / ``summaries.json``), a single run
(``summary.json``, ``steps.parquet``, ``events.parquet``) or a ``moe-tune`` study
(``outputs/tune/<study>/study.db``, or any Optuna storage with ``--storage URL --study NAME``).
It then draws every figure the data supports (:mod:`sim.report.figures`,
:mod:`sim.report.timeline`, :mod:`sim.report.tuning`) and writes them with ``report.md`` into
``<folder>/report/`` (:mod:`sim.report.build`), all at once or not at all.

    from moe_offload_lab.sim.report import write_report
    write_report("outputs/sweep/20250101-120000")     # -> outputs/sweep/.../report/report.md
"""

from moe_offload_lab.sim.report.build import build_sections, report_source, write_report
from moe_offload_lab.sim.report.sources import Source, load_folder, load_study, runs_source

__all__ = ["Source", "build_sections", "load_folder", "load_study", "report_source",
           "runs_source", "write_report"]
