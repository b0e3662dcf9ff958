import numpy as np
import pytest
import torch

from avdet.boxes import box_from_heatmap, boxes_from_heatmaps, largest_component, threshold


def test_threshold_is_eq5():
    h = np.array([[0.0, 1.0], [2.0, 5.0]])  # max 5, mean 2
    assert threshold(h, 0.0) == pytest.approx(2.0)
    assert threshold(h, 1.0) == pytest.approx(5.0)
    assert threshold(h, 0.25) == pytest.approx(0.25 * 5 + 0.75 * 2)


def test_two_blobs_gives_larger_ones_tight_box_on_grid():
    h = np.zeros((8, 8))
    h[1:3, 1:3] = 1.0        # small blob (4 cells)
    h[4:7, 3:8] = 0.9        # large blob (15 cells), lower values
    # ε = 0.5·1 + 0.5·mean; mean = (4 + 13.5)/64 ≈ 0.27 -> ε ≈ 0.64: both blobs pass, the larger wins
    box = box_from_heatmap(h, 0.5, (8, 8), upsample=False)
    assert box == (3.0, 4.0, 8.0, 7.0)


def test_box_in_image_coords_for_known_grid():
    h = np.zeros((4, 4))
    h[1, 2] = 1.0  # row 1, column 2
    # image 64 (H) × 128 (W): cells are 16 px tall, 32 px wide -> column 2 spans [64, 96), row 1 spans [16, 32)
    assert box_from_heatmap(h, 0.5, (64, 128), upsample=False) == (64.0, 16.0, 96.0, 32.0)
    # upsampled: the box is centred on the same cell and lies inside the image
    x0, y0, x1, y1 = box_from_heatmap(torch.tensor(h), 0.5, (64, 128), upsample=True)
    assert (x0 + x1) / 2 == pytest.approx(80.0, abs=2) and (y0 + y1) / 2 == pytest.approx(24.0, abs=2)
    assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 64


def test_tie_goes_to_component_with_max():
    h = np.zeros((5, 5))
    h[0, 0:2] = 0.8
    h[4, 3:5] = [0.8, 1.0]
    comp = largest_component(h > 0.5, h)
    assert comp[4, 4] and not comp[0, 0]


def test_beta_sweep_is_monotone():
    yy, xx = np.mgrid[0:14, 0:14]
    h = np.exp(-((xx - 6.3) ** 2 + (yy - 7.1) ** 2) / 8.0) + 0.01 * np.sin(xx)
    areas = []
    for beta in np.linspace(0.0, 1.0, 11):
        x0, y0, x1, y1 = box_from_heatmap(h, beta, (112, 112))
        areas.append((x1 - x0) * (y1 - y0))
    assert all(a >= b for a, b in zip(areas, areas[1:]))
    assert areas[0] > areas[-1] > 0


def test_constant_heatmap_gives_whole_image_and_batch_shape():
    hm = torch.zeros(3, 7, 7)
    hm[1, 3, 3] = 1.0
    out = boxes_from_heatmaps(hm, 0.5, (28, 28), upsample=False)
    assert out.shape == (3, 4)
    assert tuple(out[0]) == (0.0, 0.0, 28.0, 28.0)
    assert tuple(out[1]) == (12.0, 12.0, 16.0, 16.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        box_from_heatmap(np.zeros((2, 2, 2)), 0.5, (4, 4))
    with pytest.raises(ValueError):
        box_from_heatmap(np.full((2, 2), np.nan), 0.5, (4, 4))
    with pytest.raises(ValueError):
        box_from_heatmap(np.zeros((2, 2)), 1.5, (4, 4))
