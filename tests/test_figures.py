"""Every label overlay carries a colour key of NCR, ED and ET: matplotlib figures and rendered images."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from neumours.conventions import CLASS_NAMES
from neumours.figures import case_montage, comparison_figure, montage_figure
from neumours.regions import LABEL_COLOURS
from neumours.render.io import MIN_LEGEND_HEIGHT, stamp_label_legend

TUMOUR = sorted(LABEL_COLOURS)  # labels 1..3


@pytest.fixture(scope="module")
def case():
    from neumours.data.phantom import make_case

    return make_case((32, 32, 24), seed=0, index=0)


def legend_entries(fig) -> list[tuple[str, tuple[float, float, float]]]:
    (legend,) = fig.legends
    return [(text.get_text(), to_rgb(handle.get_facecolor()))
            for text, handle in zip(legend.get_texts(), legend.legend_handles)]


def expected_entries() -> list[tuple[str, tuple[float, float, float]]]:
    return [(CLASS_NAMES[k], LABEL_COLOURS[k]) for k in TUMOUR]


def test_montage_and_comparison_figures_carry_the_label_key(case):
    fig = montage_figure([case])
    try:
        got = legend_entries(fig)
    finally:
        plt.close(fig)
    assert [name for name, _ in got] == ["NCR", "ED", "ET"]
    for (name, rgb), (_, want) in zip(got, expected_entries()):
        np.testing.assert_allclose(rgb, want, err_msg=name)
    fig = comparison_figure([(case.case_id, case.images[3], [case.label, case.label])], titles=("a", "b"))
    try:
        assert [name for name, _ in legend_entries(fig)] == ["NCR", "ED", "ET"]
    finally:
        plt.close(fig)


def test_montage_png_shows_the_key_below_the_panels(case, tmp_path):
    path = case_montage([case], tmp_path / "montage.png")
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    strip = image[int(0.9 * image.shape[0]):]  # the key sits under the panels
    for name, rgb in expected_entries():
        colour = np.round(255 * np.array(rgb)).astype(int)
        assert (np.abs(strip - colour).max(axis=-1) <= 2).sum() >= 20, f"no {name} swatch below the panels"


def test_stamp_label_legend_draws_the_classes_on_images_tall_enough():
    colours = np.array([LABEL_COLOURS[k] for k in TUMOUR])
    names = [CLASS_NAMES[k] for k in TUMOUR]
    image = np.zeros((MIN_LEGEND_HEIGHT, 160, 3), np.uint8)
    stamped = stamp_label_legend(image, colours, names)
    assert stamped.shape == image.shape and stamped.dtype == np.uint8
    assert not image.any()  # the input is left alone
    pixels = stamped.reshape(-1, 3)
    for name, rgb in zip(names, colours):
        want = np.round(255 * rgb).astype(np.uint8)
        assert (pixels == want).all(axis=1).sum() >= 4, f"no {name} swatch"
    assert (pixels == 255).all(axis=1).any()  # the names, in white
    small = np.full((MIN_LEGEND_HEIGHT - 1, 160, 3), 7, np.uint8)
    kept = stamp_label_legend(small, colours, names)
    np.testing.assert_array_equal(kept, small)
    assert kept is not small
