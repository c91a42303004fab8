"""Time series for TimeMaster: real UCR sets from aeon, plots, prompts, the answer format, perception
series and templated reasoning. Pure data -- no policy, no engine.

* **Real data**: GunPoint, ArrowHead and ItalyPowerDemand ship inside the ``aeon`` wheel with their
  own train/test splits (:func:`load_ucr`, nothing downloaded). They stand in for TimerBed's sets
  (UCR Computers, Lightning7, ...), which aeon does not ship.
* **Rendering** (:class:`PlotRenderer`): one line plot per series, 6 x 2.5 in as in the paper, line
  width 2 points, axes hidden (a tiny model trained from scratch gains nothing from tick labels).
* **Prompt** (:func:`build_prompt`): the domain (what was measured, how many steps) and each class
  with a one-line definition; the answer is ``<think>...</think><class>NAME</class>``
  (:func:`format_answer`, :func:`parse_answer`). The *numbers* view replaces the image with the
  series as text, downsampled and quantised to one digit per step (:func:`series_as_text`).
* **Perception** (:func:`synthetic_series`): procedurally generated series whose shape class the
  generator knows (rise, fall, peak, two peaks, dip, wave, step up, step down), in the same format,
  so a model trained from scratch learns to read plots before it sees a few dozen real ones.
* **Templated reasoning** (:func:`describe`): the ``<think>`` text of every demonstration is computed
  from the series by the same functions for synthetic and real data (trend, number of peaks, where
  the maximum is), so what the model learns to say is grounded in what it sees.
* **Reward** (:func:`class_accuracy`, :func:`class_format`): 0.9 x accuracy + 0.1 x format, format
  meaning a valid class name inside ``<class>`` after a ``<think>`` block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from warmstart.errors import DataError

# ------------------------------------------------------------------------------------------ UCR sets


@dataclass(frozen=True)
class UCRSet:
    """One UCR dataset as the prompt describes it: what was measured and the classes (label code in
    aeon -> (short name, one-line definition))."""

    name: str
    loader: str  # function in aeon.datasets
    domain: str
    classes: dict[str, tuple[str, str]]


UCR_SETS: dict[str, UCRSet] = {
    "GunPoint": UCRSet(
        "GunPoint", "load_gunpoint", "motion capture, x-position of an actor's hand, 30 Hz",
        {"1": ("gun", "draws a gun from a hip holster, aims, puts it back"),
         "2": ("point", "raises an empty hand and points, no holster")},
    ),
    "ArrowHead": UCRSet(
        "ArrowHead", "load_arrow_head", "outline of a stone arrowhead traced as a 1-D shape profile",
        {"0": ("avonlea", "Avonlea point: small, thin, side notched"),
         "1": ("clovis", "Clovis point: large, fluted, concave base"),
         "2": ("mix", "other types mixed")},
    ),
    "ItalyPowerDemand": UCRSet(
        "ItalyPowerDemand", "load_italy_power_demand", "Italian electricity demand, one day, hourly",
        {"1": ("winter", "a day from October to March"),
         "2": ("summer", "a day from April to September")},
    ),
    "OSULeaf": UCRSet(
        "OSULeaf", "load_osuleaf", "outline of a leaf traced as a 1-D shape profile",
        {str(i): (f"leaf{i}", f"leaf species {i}") for i in range(6)},
    ),
}


def load_ucr(name: str, split: str) -> tuple[np.ndarray, list[str]]:
    """Series (n, L) float64 and class names of a UCR set shipped in the aeon wheel (its own split)."""
    if name not in UCR_SETS:
        raise DataError(f"unknown UCR dataset {name!r}; known: {', '.join(UCR_SETS)}.")
    if split not in ("train", "test"):
        raise DataError(f"UCR split must be 'train' or 'test', not {split!r}.")
    try:
        import aeon.datasets as ds
    except ImportError:
        raise DataError("the TimeMaster task reads UCR series from the `aeon` package: pip install 'warmstart[timemaster]'.") from None
    spec = UCR_SETS[name]
    X, y = getattr(ds, spec.loader)(split=split)
    X = np.asarray(X, dtype=np.float64)[:, 0, :]  # univariate: (n, 1, L) -> (n, L)
    names = []
    for lab in y:
        if str(lab) not in spec.classes:
            raise DataError(f"{name}: label {lab!r} has no class name (known codes {list(spec.classes)}).")
        names.append(spec.classes[str(lab)][0])
    return X, names


# -------------------------------------------------------------------------------- perception series

SHAPES: dict[str, str] = {
    "rise": "goes up",
    "fall": "goes down",
    "peak": "one bump",
    "twopeaks": "two bumps",
    "dip": "one valley",
    "wave": "repeats",
    "stepup": "jumps up",
    "stepdown": "jumps down",
}
SYNTHETIC = UCRSet("Synthetic", "", "generated shapes", {k: (k, v) for k, v in SHAPES.items()})


def synthetic_series(shape: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy series of a known shape class (see :data:`SHAPES`), ``length`` steps."""
    t = np.linspace(0.0, 1.0, length)
    amp = rng.uniform(1.5, 3.0)

    def bump(c, w):
        return np.exp(-0.5 * ((t - c) / w) ** 2)

    if shape == "rise":
        x = amp * t ** rng.uniform(0.5, 2.0)
    elif shape == "fall":
        x = -amp * t ** rng.uniform(0.5, 2.0)
    elif shape == "peak":
        x = amp * bump(rng.uniform(0.2, 0.8), rng.uniform(0.04, 0.12))
    elif shape == "twopeaks":
        c1 = rng.uniform(0.15, 0.4)
        c2 = c1 + rng.uniform(0.3, 0.45)
        w = rng.uniform(0.03, 0.08)
        x = amp * (bump(c1, w) + rng.uniform(0.7, 1.0) * bump(c2, w))
    elif shape == "dip":
        x = -amp * bump(rng.uniform(0.2, 0.8), rng.uniform(0.04, 0.12))
    elif shape == "wave":
        x = amp * np.sin(2 * np.pi * rng.uniform(4.0, 7.0) * t + rng.uniform(0, 2 * np.pi))
    elif shape in ("stepup", "stepdown"):
        sign = 1.0 if shape == "stepup" else -1.0
        x = sign * amp * (t > rng.uniform(0.25, 0.75)).astype(float)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return x + rng.normal(0.0, 0.12, length) + rng.uniform(-1, 1)


# ----------------------------------------------------------------------------- templated reasoning


def _znorm(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean()) / (x.std() + 1e-8)


def count_peaks(z: np.ndarray, prominence: float = 1.0) -> int:
    """Local maxima of ``z`` that rise at least ``prominence`` above the higher of the two minima
    separating them from a higher point (or the ends): the usual topographic prominence."""
    n = len(z)
    count = 0
    for i in range(1, n - 1):
        if not (z[i] > z[i - 1] and z[i] >= z[i + 1]):
            continue
        left = z[: i + 1][::-1]
        right = z[i:]
        # lowest point before the series climbs above this peak, on each side
        lh = np.nonzero(left > z[i])[0]
        rh = np.nonzero(right > z[i])[0]
        lmin = left[: lh[0]].min() if len(lh) else left.min()
        rmin = right[: rh[0]].min() if len(rh) else right.min()
        if z[i] - max(lmin, rmin) >= prominence:
            count += 1
    return count


def describe(x: np.ndarray) -> str:
    """A short description of a series computed from its values: overall trend (last fifth vs first
    fifth, in standard deviations), prominent peaks (of a smoothed copy) and where the maximum lies.
    Used as the templated ``<think>`` of every demonstration, synthetic or real."""
    z = _znorm(x)
    n = len(z)
    k = max(1, n // 5)
    d = z[-k:].mean() - z[:k].mean()
    trend = "rises" if d > 0.8 else "falls" if d < -0.8 else "level"
    w = max(1, n // 25)
    smooth = np.convolve(z, np.ones(w) / w, mode="valid") if w > 1 else z
    p = min(count_peaks(smooth, 1.0), 3)
    peaks = {0: "no peak", 1: "1 peak", 2: "2 peaks", 3: "3+ peaks"}[p]
    pos = ("early", "mid", "late")[min(2, int(3 * int(np.argmax(z)) / n))]
    return f"{trend}, {peaks}, max {pos}"


# ----------------------------------------------------------------------------- prompt and answers


def series_as_text(x: np.ndarray, n_points: int = 32) -> str:
    """The *numbers* view: the series averaged down to at most ``n_points`` values, min-max scaled
    to one digit 0-9 each (a character-level model reads one token per value)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) > n_points:
        edges = np.linspace(0, len(x), n_points + 1).astype(int)
        x = np.array([x[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    lo, hi = x.min(), x.max()
    q = np.zeros(len(x), dtype=int) if hi - lo < 1e-12 else np.round(9 * (x - lo) / (hi - lo)).astype(int)
    return " ".join(str(int(v)) for v in q)


def build_prompt(spec: UCRSet, length: int, numbers: str | None = None, definitions: bool = True) -> str:
    """The question: the domain, the series length, the classes (with a one-line definition each when
    ``definitions``), the series itself as digits when ``numbers`` is given (else the image carries
    it), and the answer format."""
    cls = "; ".join(f"{n}: {d}" if definitions else n for n, d in spec.classes.values())
    head = f"{spec.name}: {spec.domain}, {length} steps. Classes: {cls}."
    body = f" Series: {numbers}." if numbers is not None else ""
    return head + body + " Answer <think>..</think><class>..</class>"


def format_answer(reasoning: str, label: str) -> str:
    """The target completion: ``<think>reasoning</think><class>label</class>``."""
    return f"<think>{reasoning}</think><class>{label}</class>"


_ANSWER = re.compile(r"^\s*<think>(.*?)</think>\s*<class>(.*?)</class>\s*(?:<extension>.*?</extension>\s*)?$", re.DOTALL)
_CLASS = re.compile(r"<class>(.*?)</class>", re.DOTALL)


def parse_answer(text: str) -> tuple[str | None, str | None]:
    """(reasoning, class) of a well-formed answer; (None, class-or-None) when the format is broken
    (the class is then the last ``<class>`` block found, if any)."""
    m = _ANSWER.match(text)
    if m:
        return m.group(1).strip(), m.group(2).strip().lower()
    found = _CLASS.findall(text)
    return None, (found[-1].strip().lower() if found else None)


def class_accuracy(text: str, answer: str) -> float:
    """1.0 when the class named in the output is the reference class (case-insensitive)."""
    _, got = parse_answer(text)
    return 1.0 if got is not None and got == answer.strip().lower() else 0.0


def class_format(text: str, classes: list[str]) -> float:
    """1.0 when the output is ``<think>..</think><class>C</class>`` (an optional ``<extension>``
    block after it) with ``C`` one of ``classes``."""
    think, got = parse_answer(text)
    return 1.0 if think is not None and got in {c.lower() for c in classes} else 0.0


def timemaster_reward(text: str, answer: str, classes: list[str]) -> float:
    """The paper's reward: 0.9 x accuracy + 0.1 x format."""
    return 0.9 * class_accuracy(text, answer) + 0.1 * class_format(text, classes)


# ------------------------------------------------------------------------------------- rendering


class PlotRenderer:
    """Line plots of series as RGB arrays, one reused matplotlib figure (creating a figure per
    series costs ~10x more than redrawing one line).

    ``figsize`` and ``linewidth`` follow the paper (6 x 2.5 in, 2 pt); ``dpi`` sets the pixel size
    (16 dpi -> 96 x 40 px); the processor then resizes to the vision tower's input. The line is
    never thinner than 1.5 px: at a low dpi 2 pt would be a faint, half-pixel grey trace."""

    def __init__(self, figsize: tuple[float, float] = (6.0, 2.5), dpi: int = 16, linewidth: float = 2.0):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=figsize, dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_axes((0.02, 0.04, 0.96, 0.92))
        self.ax.set_axis_off()
        width = max(linewidth, 1.5 * 72.0 / dpi)  # points; 1.5 px at this dpi
        (self.line,) = self.ax.plot([0, 1], [0, 1], color="black", linewidth=width)

    def render(self, x: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 image of the series as a line plot."""
        x = np.asarray(x, dtype=np.float64)
        self.line.set_data(np.arange(len(x)), x)
        self.ax.set_xlim(0, max(1, len(x) - 1))
        lo, hi = float(x.min()), float(x.max())
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        self.ax.set_ylim(lo - pad, hi + pad)
        self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


# ------------------------------------------------------------------------------------- problems


@dataclass
class SeriesItem:
    """One labelled series with everything a prompt needs."""

    dataset: str
    series: np.ndarray
    label: str  # class name
    index: int  # position in its split (for error messages and reproducible subsets)
    info: dict = field(default_factory=dict)


def ucr_items(name: str, split: str, limit: int | None = None, seed: int = 0) -> list[SeriesItem]:
    """The items of one UCR split; with ``limit``, a fixed seeded subset of that many (the same for
    every run, so held-out accuracies compare)."""
    X, names = load_ucr(name, split)
    idx = np.arange(len(X))
    if limit is not None and limit < len(X):
        idx = np.sort(np.random.default_rng(seed).permutation(len(X))[:limit])
    return [SeriesItem(name, X[i], names[i], int(i)) for i in idx]


def synthetic_items(n: int, seed: int, min_len: int = 24, max_len: int = 256) -> list[SeriesItem]:
    """``n`` perception series, shape classes in turn, random lengths in [min_len, max_len]."""
    rng = np.random.default_rng(seed)
    shapes = list(SHAPES)
    return [SeriesItem("Synthetic", synthetic_series(shapes[i % len(shapes)], int(rng.integers(min_len, max_len + 1)), rng),
                       shapes[i % len(shapes)], i) for i in range(n)]


def spec_of(dataset: str) -> UCRSet:
    return SYNTHETIC if dataset == "Synthetic" else UCR_SETS[dataset]
