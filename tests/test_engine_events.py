"""metrics.jsonl lines, TensorBoard scalars, the console line, and truncation on resume."""

import json
import logging

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resnet_det.engine import events as events_module
from resnet_det.engine.events import EventWriter, truncate_metrics


def _iterations(path):
    return [json.loads(line)["iteration"] for line in path.read_text().splitlines()]


def test_each_write_is_one_flushed_json_line_and_a_tensorboard_scalar(tmp_path):
    with EventWriter(tmp_path, max_iter=10, progress=False) as writer:
        writer.write(2, {"total_loss": 0.5, "lr": 0.1})
        # Flushed at once: a run killed now keeps the line.
        assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"iteration": 2, "total_loss": 0.5, "lr": 0.1}
        writer.write(4, {"total_loss": 0.25, "lr": 0.1, "top1_err": 12.5})

    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    losses = [(e.step, e.value) for e in accumulator.Scalars("total_loss")]
    assert losses == [(2, 0.5), (4, 0.25)]
    assert [e.value for e in accumulator.Scalars("top1_err")] == [12.5]


def test_without_a_terminal_each_report_is_a_log_line(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger=events_module.__name__):
        with EventWriter(tmp_path, max_iter=100, progress=True) as writer:  # stderr is not a TTY here
            writer.write(20, {"total_loss": 0.123456, "lr": 0.02, "time": 0.5, "eta_seconds": 40.0})
    assert "iter 20/100  total_loss 0.1235  lr 0.02  eta 0:00:40" in caplog.text


def test_resume_drops_lines_after_the_checkpoint_and_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"iteration": i, "total_loss": 1.0 / i}) + "\n" for i in range(1, 11)]
    path.write_text("".join(lines) + '{"iteration": 11, "total_lo')

    with EventWriter(tmp_path, max_iter=20, start_iter=6, progress=False) as writer:
        assert _iterations(path) == [1, 2, 3, 4, 5, 6]
        writer.write(7, {"total_loss": 0.1})

    assert _iterations(path) == [1, 2, 3, 4, 5, 6, 7]


def test_a_fresh_run_starts_a_fresh_file_and_truncation_keeps_equal_files(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 3}\n')
    truncate_metrics(path, 3)
    assert path.read_text() == '{"iteration": 3}\n'
    truncate_metrics(path, 0)
    assert path.read_text() == ""
    truncate_metrics(tmp_path / "absent.jsonl", 5)
    assert not (tmp_path / "absent.jsonl").exists()
