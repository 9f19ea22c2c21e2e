"""The lm-eval task helper refuses data files its templates would make lm_eval reject or misread."""

import json

import pytest

from hope_mega.eval import harness


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


GOOD = {"question": "2 + 2?", "choices": ["3", "4"], "answer": 1}


@pytest.mark.parametrize("record, problem", [
    ({"question": "q", "choices": ["a", "b"], "label": 0}, 'no "answer" field (found "label": rename it to "answer")'),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, '"answer" must be the index of the right choice, an integer in 0..1; got 2'),
    ({"question": "q", "choices": ["a", "b"], "answer": "b"}, "an integer in 0..1; got 'b'"),
    ({"question": "q", "choices": ["a"], "answer": 0}, '"choices" must be a list of at least two strings'),
    ({"choices": ["a", "b"], "answer": 0}, 'no "question" string'),
])
def test_bad_multiple_choice_line_is_named_and_nothing_written(tmp_path, record, problem):
    data = write(tmp_path / "mc.jsonl", [GOOD, record])
    with pytest.raises(harness.TaskDataError) as err:
        harness.write_tasks(tmp_path / "tasks", mc_data=data)
    assert str(err.value).startswith(f"{data}:2: hope_local_mc: ")
    assert problem in str(err.value)
    assert not (tmp_path / "tasks" / "hope_local_mc.yaml").exists()


def test_ppl_needs_text_and_the_cli_says_so_in_one_line(tmp_path, capsys):
    data = write(tmp_path / "ppl.jsonl", [{"text": "a document"}, {"body": "x"}])
    assert harness.main(["--output", str(tmp_path / "tasks"), "--ppl", str(data)]) == 2
    assert capsys.readouterr().err == f'error: {data}:2: hope_local_ppl: no non-empty "text" string\n'


def test_good_files_and_the_shipped_sample_pass(tmp_path):
    assert harness.check_data("hope_local_mc", harness.SAMPLE_MC) > 0
    data = write(tmp_path / "mc.jsonl", [GOOD, GOOD])
    assert harness.write_tasks(tmp_path / "tasks", mc_data=data) == ["hope_local_mc"]
    assert json.dumps(str(data.resolve())) in (tmp_path / "tasks" / "hope_local_mc.yaml").read_text()
