"""The chart tool set (V-ToolRL's tools in spirit, METHODS.md §E) over one bar chart's data.

The state of a call is the chart the question is about: ``{"labels": [...], "values": [...]}``. The
policy sees the chart only approximately (in the text variant: values rounded, as a reader sees bar
heights); the tools give exact readings, like the paper's OCR and line-drawing tools:

=================  ===============================================  ==========================
tool               answers                                          the paper's counterpart
=================  ===============================================  ==========================
``point``          where a label's bar is (its position)             Point
``read_value``     the exact value of a bar                          OCR
``zoom``           the exact values of a run of bars (a close-up)    ZoomInSubfigure
``draw_line``      which bars rise above a horizontal line           DrawHorizontalLineByY
``terminate``      records the answer and ends the episode           Terminate
=================  ===============================================  ==========================

**Images.** When the state carries ``"image": [width, height]`` the chart is also a picture
(:func:`render_chart`: bars or a line with markers, label letters under the x axis, drawn with PIL
from the data the state keeps, cached by content) and the tools act on it as the paper's do:
``zoom`` returns a close-up (the crop around a run of bars, scaled back up to the chart's size,
``img_<n>``), ``draw_line`` returns the chart with the line drawn (and the bars above it),
``point`` gives a label's pixel position. Without ``image`` the tools answer in text only (the
text-chart variant).
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from warmstart.config import PluginConfig
from warmstart.registry import TOOLSETS
from warmstart.tools import ToolOutput, ToolSet, tool

MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 4, 12, 4  # pixels around the plot area: room for the label letters


def _geometry(n: int, width: int, height: int) -> tuple[float, int, int]:
    """(slot width, plot top y, plot bottom y) of a chart of ``n`` marks."""
    return (width - MARGIN_LEFT - 2) / n, MARGIN_TOP, height - MARGIN_BOTTOM


def mark_x(i: int, n: int, width: int) -> int:
    """The x pixel of the centre of mark ``i`` of ``n``."""
    slot = (width - MARGIN_LEFT - 2) / n
    return int(MARGIN_LEFT + slot * (i + 0.5))


def value_y(v: float, ymax: float, height: int) -> int:
    """The y pixel of value ``v`` on an axis from 0 (bottom of the plot) to ``ymax`` (its top)."""
    top, bottom = MARGIN_TOP, height - MARGIN_BOTTOM
    return int(round(bottom - (bottom - top) * max(0.0, min(v, ymax)) / ymax))


def render_chart(kind: str, labels: tuple[str, ...], values: tuple[int, ...], ymax: int, width: int, height: int):
    """The chart as a PIL RGB image (white background, black axes, marks in blue, label letters
    under the x axis). Cached by content (a GRPO group and every tool call on one chart reuse one
    drawing); callers that draw on it copy it first."""
    return _render(kind, tuple(labels), tuple(int(v) for v in values), int(ymax), int(width), int(height)).copy()


@lru_cache(maxsize=4096)
def _render(kind: str, labels: tuple[str, ...], values: tuple[int, ...], ymax: int, width: int, height: int):
    from PIL import Image, ImageDraw

    if kind not in ("bar", "line"):
        raise ValueError(f"a chart is 'bar' or 'line', not {kind!r}")
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    n = len(labels)
    slot, top, bottom = _geometry(n, width, height)
    d.line([(MARGIN_LEFT - 1, top), (MARGIN_LEFT - 1, bottom), (width - 1, bottom)], fill="black")
    pts = [(mark_x(i, n, width), value_y(v, ymax, height)) for i, v in enumerate(values)]
    if kind == "bar":
        half = max(1, int(slot * 0.35))
        for x, y in pts:
            if y < bottom:  # a bar of height 0 is no bar
                d.rectangle([x - half, y, x + half, bottom - 1], fill=(40, 90, 200))
    else:
        d.line(pts, fill=(40, 90, 200), width=1)
        for x, y in pts:
            d.rectangle([x - 1, y - 1, x + 1, y + 1], fill=(200, 40, 40))
    for (x, _), lab in zip(pts, labels):
        d.text((x - 2, bottom + 1), lab, fill="black")
    return im


class ChartToolsConfig(PluginConfig):
    kind: str = "chart"
    max_zoom: int = Field(4, ge=1, description="bars one zoom may show (a close-up, not the whole chart)")


class ChartTools(ToolSet):
    """Exact readings of a chart (state: ``labels``, ``values``; for a picture also ``image``:
    [width, height], ``kind``: bar | line and ``ymax``, the top of the y axis)."""

    name = "chart"

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the chart's picture, or None for the text variant."""
        im = self.state.get("image")
        return (int(im[0]), int(im[1])) if im else None

    def picture(self):
        """The rendered chart of this state (a fresh copy: tools draw on it)."""
        w, h = self.size
        st = self.state
        return render_chart(st.get("kind", "bar"), st["labels"], st["values"], st.get("ymax", max(st["values"]) or 1), w, h)

    def _index(self, label: str) -> int:
        labels = self.state["labels"]
        if label not in labels:
            raise ValueError(f"no bar labelled {label!r}; the labels are {' '.join(labels)}")
        return labels.index(label)

    @tool
    def point(self, label: str) -> str:
        """Find where a bar is on the chart.

        Args:
            label: the bar's label, e.g. "C"
        """
        i = self._index(label)
        n = len(self.state["labels"])
        if self.size:
            return f"{label} is mark {i + 1} of {n}, at x={mark_x(i, n, self.size[0])}"
        return f"{label} is bar {i + 1} of {n}"

    @tool
    def read_value(self, label: str) -> str:
        """Read the exact value of a bar.

        Args:
            label: the bar's label, e.g. "C"
        """
        return str(self.state["values"][self._index(label)])

    @tool
    def zoom(self, first: str, last: str) -> str:
        """Zoom into a run of neighbouring bars: a close-up (a new image) of a chart picture, their exact values for a text chart.

        Args:
            first: label of the first bar of the run
            last: label of the last bar of the run
        """
        i, j = sorted((self._index(first), self._index(last)))
        if j - i + 1 > self.options.get("max_zoom", 4):
            raise ValueError(f"a zoom shows at most {self.options.get('max_zoom', 4)} bars")
        labels = self.state["labels"]
        if self.size:
            w, h = self.size
            n = len(labels)
            slot = (w - MARGIN_LEFT - 2) / n
            x0, x1 = int(mark_x(i, n, w) - slot / 2), int(mark_x(j, n, w) + slot / 2) + 1
            # the run's columns (axis to labels), scaled back up to the chart's size: the bars' heights
            # and letters cover several times the pixels they had
            crop = self.picture().crop((max(0, x0), 0, min(w, x1), h)).resize((w, h), resample=0)  # nearest: no blur
            return ToolOutput(text=f"zoom on {labels[i]}..{labels[j]}", images=[crop])
        return " ".join(f"{labels[k]}:{self.state['values'][k]}" for k in range(i, j + 1))

    @tool
    def draw_line(self, y: int) -> str:
        """Draw a horizontal line at height y and list the bars that rise above it.

        Args:
            y: the line's height
        """
        above = [lab for lab, v in zip(self.state["labels"], self.state["values"]) if v > y]
        text = "above: " + (" ".join(above) if above else "none")
        if self.size:
            from PIL import ImageDraw

            im = self.picture()
            st = self.state
            yy = value_y(y, st.get("ymax", max(st["values"]) or 1), self.size[1])
            ImageDraw.Draw(im).line([(MARGIN_LEFT, yy), (self.size[0] - 1, yy)], fill=(230, 30, 30))
            return ToolOutput(text=text, images=[im])
        return text

    @tool
    def terminate(self, answer: str) -> str:
        """Give the final answer and stop.

        Args:
            answer: the answer to the question
        """
        return f"answer: {answer}"


@TOOLSETS.register("chart", ChartToolsConfig)
def make_chart_tools(cfg: ChartToolsConfig) -> type[ToolSet]:
    """Chart tools: point, read_value, zoom, draw_line, terminate (on a text chart or a rendered bar/line chart)."""
    return ChartTools
