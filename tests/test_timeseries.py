"""TimeMaster data: UCR splits from aeon, the answer format and reward, the numbers view, perception
series and their descriptions, plots."""

import numpy as np
import pytest

from warmstart.errors import DataError
from warmstart.tasks.timeseries import (
    SHAPES,
    SYNTHETIC,
    UCR_SETS,
    PlotRenderer,
    build_prompt,
    class_accuracy,
    class_format,
    count_peaks,
    describe,
    format_answer,
    load_ucr,
    parse_answer,
    series_as_text,
    synthetic_series,
    timemaster_reward,
    ucr_items,
)

pytest.importorskip("aeon")


@pytest.mark.parametrize("name,n_train,n_test,length,classes", [
    ("GunPoint", 50, 150, 150, {"gun", "point"}),
    ("ArrowHead", 36, 175, 251, {"avonlea", "clovis", "mix"}),
    ("ItalyPowerDemand", 67, 1029, 24, {"winter", "summer"}),
])
def test_ucr_sets_load_with_their_own_splits(name, n_train, n_test, length, classes):
    Xtr, ytr = load_ucr(name, "train")
    Xte, yte = load_ucr(name, "test")
    assert Xtr.shape == (n_train, length) and Xte.shape == (n_test, length)
    assert set(ytr) == classes and set(yte) == classes


def test_unknown_dataset_and_split_are_clear_errors():
    with pytest.raises(DataError, match="unknown UCR dataset 'Gunpoint'"):
        load_ucr("Gunpoint", "train")
    with pytest.raises(DataError, match="'train' or 'test'"):
        load_ucr("GunPoint", "valid")


def test_fixed_test_subset_is_reproducible_and_from_the_test_split():
    a = ucr_items("ItalyPowerDemand", "test", 50, seed=0)
    b = ucr_items("ItalyPowerDemand", "test", 50, seed=0)
    assert [x.index for x in a] == [x.index for x in b] and len(a) == 50
    Xte, _ = load_ucr("ItalyPowerDemand", "test")
    assert np.array_equal(a[3].series, Xte[a[3].index])


def test_answer_format_parse_and_reward():
    ok = format_answer("rises, 1 peak, max mid", "gun")
    assert ok == "<think>rises, 1 peak, max mid</think><class>gun</class>"
    assert parse_answer(ok) == ("rises, 1 peak, max mid", "gun")
    assert parse_answer(ok + "<extension>long</extension>") == ("rises, 1 peak, max mid", "gun")
    assert parse_answer("<class>Point</class> trailing") == (None, "point")
    assert parse_answer("no tags") == (None, None)
    classes = ["gun", "point"]
    assert timemaster_reward(ok, "gun", classes) == pytest.approx(1.0)
    assert timemaster_reward(ok, "point", classes) == pytest.approx(0.1)  # well formed, wrong
    assert timemaster_reward("<class>gun</class>", "gun", classes) == pytest.approx(0.9)  # right, no <think>
    assert class_format("<think>x</think><class>rifle</class>", classes) == 0.0  # not a class name
    assert class_accuracy("<think>x</think><class>GUN</class>", "gun") == 1.0


def test_numbers_view_is_downsampled_one_digit_per_value():
    x = np.array([0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 10.0, 0.0])
    assert series_as_text(x, 8) == "0 2 4 5 7 9 9 0"  # round(9 * x / 10)
    # pairwise means 1, 5, 9, 5 -> 9 * (m - 1) / 8 = 0, 4.5, 9, 4.5 -> numpy rounds half to even
    assert series_as_text(x, 4) == "0 4 9 4"
    assert series_as_text(np.ones(5), 8) == "0 0 0 0 0"


def test_peak_count_uses_prominence():
    z = np.array([0, 3, 0, 0.5, 0, 3, 0], dtype=float)
    assert count_peaks(z, 1.0) == 2  # the 0.5 bump is not prominent
    assert count_peaks(z, 0.4) == 3


def test_descriptions_of_perception_shapes_follow_the_generator():
    rng = np.random.default_rng(0)
    for _ in range(10):
        assert describe(synthetic_series("rise", 120, rng)).startswith("rises, no peak")
        assert describe(synthetic_series("fall", 120, rng)).startswith("falls, no peak")
        assert ", 2 peaks," in describe(synthetic_series("twopeaks", 200, rng))
        assert ", 3+ peaks," in describe(synthetic_series("wave", 200, rng))
    with pytest.raises(ValueError, match="unknown shape"):
        synthetic_series("zigzag", 10, rng)


def test_prompt_names_domain_length_and_classes():
    p = build_prompt(UCR_SETS["GunPoint"], 150)
    assert p.startswith("GunPoint: motion capture") and "150 steps" in p
    assert "gun: draws a gun" in p and "point: raises an empty hand" in p and "<think>..</think><class>..</class>" in p
    q = build_prompt(SYNTHETIC, 40, numbers="1 2 3", definitions=False)
    assert "Series: 1 2 3." in q and "Classes: " + "; ".join(SHAPES) + "." in q


def test_plot_is_a_dark_line_on_white():
    img = PlotRenderer(dpi=16).render(np.sin(np.linspace(0, 6, 100)))
    assert img.shape == (40, 96, 3) and img.dtype == np.uint8
    dark = (img.mean(-1) < 128).sum()
    assert 50 < dark < 0.3 * 40 * 96
