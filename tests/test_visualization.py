"""draw_detections: boxes in their class colour, labels on a filled background, thresholding."""

import numpy as np
import pytest

from resnet_det.utils.visualization import class_color, draw_detections


def gray(h=120, w=160):
    return np.full((h, w, 3), 128, dtype=np.uint8)


def test_boxes_and_labels_are_drawn_on_a_copy():
    image = gray()
    out = draw_detections(image, [[40, 50, 100, 110]], [3], [0.87], class_names=["a", "b", "cat"], score_thresh=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == 128).all()  # the input is left alone
    color = class_color(3)
    assert tuple(out[80, 40]) == color and tuple(out[110, 70]) == color  # left and bottom edges
    assert (out[70:100, 50:90] == 128).all()  # inside the box nothing is painted
    label = out[38:50, 40:76].reshape(-1, 3)  # just above the box: the filled label background ...
    assert (label == color).all(axis=1).mean() > 0.4
    assert (label.astype(int).sum(axis=1) > sum(color) + 150).mean() > 0.05  # ... under light text (on magenta)


def test_detections_below_the_threshold_are_left_out():
    out = draw_detections(gray(), [[10, 10, 50, 50], [60, 60, 100, 100]], [1, 2], [0.3, 0.9], score_thresh=0.5)
    assert tuple(out[30, 10]) == (128, 128, 128)
    assert tuple(out[80, 60]) == class_color(2)


def test_a_box_at_the_top_gets_its_label_inside():
    out = draw_detections(gray(), [[20, 0, 90, 60]], [1], None, class_names=["person"])
    assert (out[1:10, 20:50].reshape(-1, 3) == class_color(1)).all(axis=1).mean() > 0.5


def test_colours_are_stable_and_distinct_per_class():
    colors = [class_color(k) for k in range(1, 81)]
    assert colors == [class_color(k) for k in range(1, 81)]
    assert len(set(colors)) == 80
    assert all(0 <= c <= 255 for rgb in colors for c in rgb)


def test_inputs_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="H x W x 3 uint8 RGB image"):
        draw_detections(np.zeros((10, 10), dtype=np.uint8), [], [])
    with pytest.raises(ValueError, match="1 boxes, 2 labels and 1 scores"):
        draw_detections(gray(), [[0, 0, 5, 5]], [1, 2], [0.9])


def test_labels_stay_inside_the_image_and_off_each_other():
    from resnet_det.utils.visualization import place_label

    # Two boxes side by side at the top: both labels want the same row inside the image's top.
    first = place_label((150, 2, 228, 60), (90, 12), 228, 169, [])
    second = place_label((120, 4, 200, 70), (90, 12), 228, 169, [first])
    for x0, y0, x1, y1 in (first, second):
        assert 0 <= x0 and x1 <= 228 and 0 <= y0 and y1 <= 169
    assert first == (138, 0, 228, 12)  # moved left and down so that it ends at the image's edges
    assert min(first[3], second[3]) <= max(first[1], second[1]) or min(first[2], second[2]) <= max(first[0], second[0])


def test_a_label_at_the_right_edge_is_moved_in_not_cut():
    image = gray(169, 228)
    out = draw_detections(image, [[200, 60, 227, 100]], [1], [0.83], class_names=["triangle"])
    color = class_color(1)
    row = out[50:60].reshape(-1, 228, 3)
    filled = (row == color).all(axis=2).any(axis=0)  # columns with the label's background
    assert filled[-1] and filled[180] and filled.sum() == 54  # all of its 54 px: it starts left of the box


def test_a_label_wider_than_the_image_is_shrunk_to_fit():
    out = draw_detections(gray(60, 50), [[5, 20, 40, 50]], [1], [0.5], class_names=["a very long class name"])
    filled = (out == class_color(1)).all(axis=2).any(axis=0)
    assert filled[1:].all()  # the label spans the image's width ...
    label_rows = (out[:, 1] == class_color(1)).all(axis=1)  # the box starts at x = 5
    assert (out[label_rows, -1] == class_color(1)).all()  # ... and its text ends before the edge, uncut


def test_lines_scale_with_the_image():
    def edge_width(size):
        out = draw_detections(gray(size, size), [[size // 4, size // 4, size // 2, size // 2]], [1])
        return int((out[size // 3, : size // 3] == class_color(1)).all(axis=1).sum())

    assert edge_width(120) == 1 and edge_width(1200) >= 4
