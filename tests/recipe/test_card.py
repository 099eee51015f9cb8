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
    at = text.index("## Evaluation")
    assert text[at + 1] == "" and text[at + 2].startswith("| suite |")  # one blank line under the heading


def test_card_names_the_stages_another_run_made(tmp_path):
    (tmp_path / "old" / "speech").mkdir(parents=True)
    (tmp_path / "new" / "sft").mkdir(parents=True)
    (tmp_path / "new" / "speech").symlink_to(tmp_path / "old" / "speech", target_is_directory=True)
    (tmp_path / "bundle").mkdir()
    done = {"speech": {"seconds": 5}, "sft": {"seconds": 7}}
    text = card(tmp_path / "bundle", done, None, run=tmp_path / "new")
    assert f"Stages another run made (this run's folders link to theirs): speech: `{tmp_path / 'old'}`." in text
    assert "Stages another run made" not in card(tmp_path / "bundle", done, None)  # no run folder: no line
    (tmp_path / "new" / "speech").unlink()
    (tmp_path / "new" / "speech").mkdir()
    assert "Stages another run made" not in card(tmp_path / "bundle", done, None, run=tmp_path / "new")


def test_card_names_the_stages_trained_further_from_a_checkpoint(tmp_path):
    (tmp_path / "bundle").mkdir()
    done = {"vocoder": {"seconds": 5, "continued_from": "runs/a/step-2000"}, "sft": {"seconds": 7}}
    text = card(tmp_path / "bundle", done, None)
    assert ("Stages trained further from another run's checkpoint (their figures are the last run's): "
            "vocoder from `runs/a/step-2000`.") in text
    assert "trained further" not in card(tmp_path / "bundle", {"sft": {"seconds": 7}}, None)
