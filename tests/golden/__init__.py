"""Golden files: the terminal comparison and the HTML report of one stored run, reviewed in diffs.

The run (``tests/data/golden_run.db``) was made by the real runner on toy models; the renderings
are compared byte for byte with ``table.txt`` and ``report.html`` here. After a deliberate
change to a report, regenerate and review the diff::

    python -m tests.golden            # re-render from the stored run
    python -m tests.golden --new-run  # make the run again first (new timings: a bigger diff)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DB = HERE.parent / "data" / "golden_run.db"


def render_table(db: Path) -> str:
    """The comparison table of the stored run, as ``smallfit results`` prints it (150 columns)."""
    from rich.console import Console

    from smallfit.report.table import print_comparison
    from smallfit.results import collect
    from smallfit.store import Store

    console = Console(width=150, record=True, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
    print_comparison(console, collect(Store.open(_copy(db)), None))
    return console.export_text()


def render_html(db: Path) -> str:
    """The HTML report of the stored run."""
    from smallfit.report.html import render
    from smallfit.results import collect
    from smallfit.store import Store

    return render(collect(Store.open(_copy(db)), None))


def _copy(db: Path) -> Path:
    """Readers open the database read-write (migrations); the committed file stays untouched."""
    target = Path(tempfile.mkdtemp()) / db.name
    shutil.copy(db, target)
    return target


def utc() -> None:
    """Dates in the reports are local time: render in UTC everywhere."""
    os.environ["TZ"] = "UTC"
    time.tzset()


def main(argv: list[str]) -> int:
    """Regenerate the golden files (and with ``--new-run`` the stored run first)."""
    utc()
    if "--new-run" in argv:
        from tests.toy_runs import DEMO, DEMO_BUDGET, make_run

        folder = Path(tempfile.mkdtemp())
        make_run(folder / "golden.db", folder, DEMO, budget=DEMO_BUDGET)
        from smallfit.store import Store

        store = Store.open(folder / "golden.db")
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.close()
        shutil.copy(folder / "golden.db", DB)
    (HERE / "table.txt").write_text(render_table(DB), encoding="utf-8")
    (HERE / "report.html").write_text(render_html(DB), encoding="utf-8")
    print(f"wrote {HERE / 'table.txt'} and {HERE / 'report.html'} from {DB}; review them with git diff")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
