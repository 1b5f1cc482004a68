"""The README's fault table lists every row of FAULTS.md, in order."""
from __future__ import annotations

import re

from tests.conftest import REPO


def _row_numbers(text: str) -> list[str]:
    return re.findall(r"^\| (\d+\.\d+) \|", text, flags=re.MULTILINE)


def test_the_readme_table_lists_every_row_of_the_matrix():
    readme_rows = _row_numbers((REPO / "README.md").read_text())
    matrix_rows = _row_numbers((REPO / "FAULTS.md").read_text())
    assert len(matrix_rows) >= 38 and readme_rows == matrix_rows

