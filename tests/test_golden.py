"""The terminal table and the HTML report of a stored run, byte for byte against reviewed files.

Regenerate after a deliberate change with ``python -m tests.golden`` and review the diff."""

import pytest

from tests.golden import DB, HERE, render_html, render_table, utc


@pytest.fixture(autouse=True)
def _utc():
    utc()


def test_terminal_table_matches_its_golden_file():
    assert render_table(DB) == (HERE / "table.txt").read_text(encoding="utf-8"), \
        "the table changed: run python -m tests.golden and review the diff"


def test_html_report_matches_its_golden_file():
    assert render_html(DB) == (HERE / "report.html").read_text(encoding="utf-8"), \
        "the report changed: run python -m tests.golden and review the diff"
