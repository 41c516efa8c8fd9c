"""`parafill write` end to end on the embedded SmolLM2 (small budgets), and its input errors."""

import re

from typer.testing import CliRunner

from parafill.cli import app

runner = CliRunner()
SMALL = [
    "--max-sections",
    "3",
    "--max-subsections",
    "0",
    "--section-tokens",
    "16",
    "--outline-tokens",
    "60",
]


def test_write_creates_the_markdown_file_and_prints_the_summary(tmp_path):
    doc = tmp_path / "doc.md"
    res = runner.invoke(app, ["write", "How bees make honey", "--out", str(doc), *SMALL])
    assert res.exit_code == 0, res.output
    text = doc.read_text(encoding="utf-8")
    headings = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert text.startswith("# How bees make honey\n\n## Introduction\n\n")
    assert headings[-1] == "## Conclusion" and 4 <= len(headings) <= 5
    numbered = headings[1:-1]
    assert [h.split(".")[0] for h in numbered] == [f"## {k}" for k in range(1, len(numbered) + 1)]
    out = res.output
    assert "[outline] done:" in out and "[intro] done:" in out  # the plain (piped) live view
    assert f"wrote {doc} ({len(headings)} sections," in out
    summary = re.search(r"parafill write: nodes (\d+) · tokens (\d+) · forward passes (\d+)", out)
    assert summary, out
    nodes, tokens, passes = map(int, summary.groups())
    # outline + bodies + a summary each + intro + conclusion
    assert nodes == 1 + 2 * len(numbered) + 2
    assert 0 < passes < tokens  # sections shared forward passes


def test_write_to_a_missing_folder_fails_before_loading_the_model(tmp_path):
    res = runner.invoke(app, ["write", "Bees", "--out", str(tmp_path / "nope" / "doc.md")])
    assert res.exit_code == 2
    assert "its folder does not exist" in res.output
    assert not (tmp_path / "nope").exists()


def test_write_rejects_an_impossible_section_cap(tmp_path):
    res = runner.invoke(
        app, ["write", "Bees", "--out", str(tmp_path / "d.md"), "--max-sections", "1"]
    )
    assert res.exit_code == 2
    assert "max_sections 1 < min_sections 2" in res.output
    assert not (tmp_path / "d.md").exists()
