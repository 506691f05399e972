"""The result story of one model and task, from the stored runs only.

* :mod:`lowrank.report.summarize`: the best method at each budget against the dense model and plain SVD
  (:func:`summary`), the saved models' generations (:func:`saved_models`, :func:`with_generations`), the SVD-drop metric's prediction beside what was measured (:func:`drop_checks`), and the
  headline sentences;
* :mod:`lowrank.report.render`: the figure (:func:`summary_figure`) and the self-contained HTML report
  (:func:`render_html`, :func:`write_report`);
* :mod:`lowrank.report.formats`: numbers as text.

Which dense run the runs are compared with is :func:`lowrank.experiments.compare.reference_run`.
"""

from lowrank.report.render import is_report, render_html, summary_figure, write_report
from lowrank.report.summarize import (
    DropCheck,
    Summary,
    SummaryRow,
    drop_checks,
    headlines,
    saved_models,
    summary,
    with_drop_checks,
    with_generations,
)

__all__ = [
    "DropCheck",
    "Summary",
    "SummaryRow",
    "drop_checks",
    "headlines",
    "is_report",
    "render_html",
    "saved_models",
    "summary",
    "summary_figure",
    "with_drop_checks",
    "with_generations",
    "write_report",
]
