"""utils.file_io: the one JSON reader (each caller's error type and fix) and JSON-lines records."""

import pytest

from resnet_det.errors import DatasetError, EvaluationError
from resnet_det.utils.file_io import json_lines, read_json


@pytest.mark.parametrize("error", [DatasetError, EvaluationError])
def test_read_json_raises_the_callers_error_with_line_column_and_fix(tmp_path, error):
    path = tmp_path / "a.json"
    path.write_text('{"images": [],\n "x" 1}')
    with pytest.raises(error) as info:
        read_json(path, "annotation file", error, fix="fix it")
    assert str(info.value) == f"{path}: line 2 column 6: malformed JSON (Expecting ':' delimiter); fix it"


def test_read_json_names_a_missing_file_and_a_file_that_is_not_text(tmp_path):
    with pytest.raises(
        EvaluationError, match=r"^results file .*gone.json does not exist: give the path of a JSON file$"
    ):
        read_json(tmp_path / "gone.json", "results file", EvaluationError)
    binary = tmp_path / "b.json"
    binary.write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(DatasetError, match=r"b.json: not a UTF-8 text file; the annotation file must be JSON$"):
        read_json(binary, "annotation file", DatasetError)
    good = tmp_path / "c.json"
    good.write_text('[{"score": 0.5}]')
    assert read_json(good, "results file", EvaluationError) == [{"score": 0.5}]


def test_json_lines_leaves_out_a_torn_last_line_and_lines_without_an_object():
    text = '{"iteration": 1}\n[1, 2]\nnot json\n{"iteration": 2}\n{"iteration": 3}'
    assert [record for _, record in json_lines(text)] == [{"iteration": 1}, {"iteration": 2}]
    assert [line for line, _ in json_lines(text)] == ['{"iteration": 1}\n', '{"iteration": 2}\n']
