import json

from glm4voice import demo


def test_demo_tokenizes_a_spoken_sentence(tmp_path, capsys):
    assert demo.main(tmp_path) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["file"].endswith("question.wav")
    assert abs(len(line["tokens"]) - line["seconds"] * 12.5) <= 1
