"""The model card's evaluation section: the report's table, and its breakdowns one heading level down."""

from __future__ import annotations

from glm4voice.eval import table
from glm4voice.recipe.card import card


def test_card_takes_the_report_and_nests_its_sections(tmp_path):
    results = {"model_dir": "m", "suites": {"qa": {"s2t_en": 0.5, "n_s2t_en": 2,
                                                   "by_task": {"add": {"s2t_en": 0.0, "t2t_en": 1.0}}}}}  # fmt: skip
    (tmp_path / "results.md").write_text(table(results))
    (tmp_path / "bundle").mkdir()
    text = card(tmp_path / "bundle", {}, tmp_path / "results.md").splitlines()
    assert "## Evaluation" in text and "### qa, by task" in text and "## qa, by task" not in text
    assert "| qa | s2t_en (n=2) | 0.5 | >= 0.9 | no |" in text and "| add | 0.0 | 1.0 |" in text
    assert not any(line.startswith("# Evaluation of") for line in text)
