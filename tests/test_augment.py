"""avdet.augment: flip and scale jitter move the boxes with the pixels; seeded draws repeat."""
import torch

from avdet.augment import augment, hflip, scale_jitter


def _frame_with_box(h=40, w=60, box=(10, 8, 30, 20)):
    img = torch.zeros(3, h, w)
    x0, y0, x1, y1 = box
    img[:, y0:y1, x0:x1] = 1.0
    return img, torch.tensor([box], dtype=torch.float32)


def _bright_box(img):
    ys, xs = torch.nonzero(img[0] > 0.5, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_hflip_mirrors_pixels_and_box():
    img, box = _frame_with_box()
    out, b = hflip(img, box)
    assert b.tolist() == [[30.0, 8.0, 50.0, 20.0]]                      # x -> 60 - x, swapped
    assert _bright_box(out) == [30, 8, 50, 20]


def test_scale_jitter_down_pads_and_up_crops_with_the_box():
    img, box = _frame_with_box()
    small, b = scale_jitter(img, box, 0.5, (0.0, 1.0))                  # 20x30 pasted at x 0, y 20 of 40x60
    assert small.shape == img.shape and b.tolist() == [[5.0, 24.0, 15.0, 30.0]]
    assert _bright_box(small) == [5, 24, 15, 30]
    big, b = scale_jitter(img, box, 2.0, (0.25, 0.0))                   # 80x120 cropped at x 15, y 0
    assert big.shape == img.shape and b.tolist() == [[5.0, 16.0, 45.0, 40.0]]
    assert _bright_box(big) == [5, 16, 45, 40]


def test_scale_jitter_keeps_the_image_when_the_box_would_be_cut_away():
    img, box = _frame_with_box(box=(0, 0, 10, 10))
    out, b = scale_jitter(img, box, 2.0, (1.0, 1.0))                    # crop at the far corner: box gone
    assert torch.equal(out, img) and torch.equal(b, box)


def test_augment_is_seeded_and_off_means_identity():
    img, box = _frame_with_box()
    a = augment(img, box, 0.5, (0.5, 1.5), torch.Generator().manual_seed(3))
    b = augment(img, box, 0.5, (0.5, 1.5), torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    out, ob = augment(img, box, 0.0, (1.0, 1.0), torch.Generator().manual_seed(3))
    assert torch.equal(out, img) and torch.equal(ob, box)
