"""Top-1 / top-5 and 10-crop evaluation on hand-made cases with known logits."""

import math

import pytest
import torch
from torch import nn

from resnet_det.errors import EvaluationError
from resnet_det.evaluation.classification import evaluate_classifier, topk_correct


class TableModel(nn.Module):
    """Returns row ``k`` of ``table`` for an image whose pixels all hold the value ``k``."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.tensor(table, dtype=torch.float32))

    def forward(self, images):
        return self.table[images[:, 0, 0, 0].long()]


def images_of(rows, size=4):
    return torch.tensor(rows, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()


def test_topk_correct_counts_the_rank_of_the_target():
    scores = torch.tensor(
        [
            [0.0, 9.0, 1.0, 2.0, 3.0, 4.0],  # target 1 ranked first
            [5.0, 1.0, 3.0, 4.0, 0.0, 2.0],  # target 2 ranked third
            [5.0, 1.0, 3.0, 4.0, 0.0, 2.0],  # target 4 ranked last (sixth)
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # target 1 ranked fifth
        ]
    )
    targets = torch.tensor([1, 2, 4, 1])
    assert topk_correct(scores, targets, ks=(1, 3, 5)).tolist() == [1, 2, 3]


def test_topk_larger_than_the_number_of_classes_counts_every_row():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    assert topk_correct(scores, torch.tensor([0, 2])).tolist() == [0, 2]


def test_evaluate_classifier_reports_errors_in_percent():
    # Four images over two batches (and an all-skipped batch): top-1 right for 1 of 4, top-5
    # right for 3 of 4 (image 3's target is ranked sixth of six).
    table = [
        [0.0, 9.0, 1.0, 2.0, 3.0, 4.0],
        [5.0, 1.0, 3.0, 4.0, 0.0, 2.0],
        [5.0, 1.0, 3.0, 4.0, 0.0, 2.0],
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
    ]
    targets = torch.tensor([1, 2, 4, 1])
    loader = [
        (images_of([0, 1]), targets[:2]),
        (torch.empty(0), torch.empty(0, dtype=torch.int64)),
        (images_of([2, 3]), targets[2:]),
    ]
    model = TableModel(table)
    metrics = evaluate_classifier(model, loader, torch.device("cpu"))
    assert not model.training
    assert metrics["num_images"] == 4
    assert metrics["top1_acc"] == pytest.approx(25.0)
    assert metrics["top1_err"] == pytest.approx(75.0)
    assert metrics["top5_acc"] == pytest.approx(75.0)
    assert metrics["top5_err"] == pytest.approx(25.0)
    expected_loss = torch.nn.functional.cross_entropy(torch.tensor(table), targets).item()
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_ten_crop_averages_the_softmax_of_the_crops():
    # Nine crops lean slightly to class 1, one crop is sure of class 2: the mean of the ten
    # softmax outputs ranks class 2 first (a vote of the crops' top-1 would say class 1).
    table = [[0.0, 0.1, 0.0], [0.0, 0.0, 10.0], [3.0, 0.0, 0.0]]
    crops_of_image_0 = images_of([0] * 9 + [1])
    crops_of_image_1 = images_of([2] * 10)
    batch = torch.stack([crops_of_image_0, crops_of_image_1])  # 2 x 10 x 3 x 4 x 4
    labels = torch.tensor([2, 1])
    metrics = evaluate_classifier(TableModel(table), [(batch, labels)], torch.device("cpu"), ten_crop=True)
    assert metrics["num_images"] == 2
    assert metrics["top1_err"] == pytest.approx(50.0)  # image 0 right, image 1 wrong

    probs = torch.softmax(torch.tensor(table), dim=1)
    mean_0 = (9 * probs[0] + probs[1]) / 10
    assert mean_0.argmax() == 2 and probs[0].argmax() == 1
    expected_loss = -(math.log(mean_0[2]) + math.log(probs[2][1])) / 2
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_ten_crop_flag_must_match_the_batches():
    model = TableModel([[1.0, 0.0]])
    with pytest.raises(ValueError, match="10-crop"):
        evaluate_classifier(model, [(images_of([0]), torch.tensor([0]))], torch.device("cpu"), ten_crop=True)


def test_an_empty_validation_set_is_a_user_error():
    model = TableModel([[1.0, 0.0]])
    with pytest.raises(EvaluationError, match="no readable images"):
        evaluate_classifier(model, [(torch.empty(0), torch.empty(0, dtype=torch.int64))], torch.device("cpu"))
