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
"""

from __future__ import annotations

from pydantic import Field

from warmstart.config import PluginConfig
from warmstart.registry import TOOLSETS
from warmstart.tools import ToolSet, tool


class ChartToolsConfig(PluginConfig):
    kind: str = "chart"
    max_zoom: int = Field(4, ge=1, description="bars one zoom may show (a close-up, not the whole chart)")


class ChartTools(ToolSet):
    """Exact readings of a bar chart (state: ``labels``, ``values``)."""

    name = "chart"

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
        return f"{label} is bar {i + 1} of {len(self.state['labels'])}"

    @tool
    def read_value(self, label: str) -> str:
        """Read the exact value of a bar.

        Args:
            label: the bar's label, e.g. "C"
        """
        return str(self.state["values"][self._index(label)])

    @tool
    def zoom(self, first: str, last: str) -> str:
        """Zoom into a run of neighbouring bars and read their exact values.

        Args:
            first: label of the first bar of the run
            last: label of the last bar of the run
        """
        i, j = sorted((self._index(first), self._index(last)))
        if j - i + 1 > self.options.get("max_zoom", 4):
            raise ValueError(f"a zoom shows at most {self.options.get('max_zoom', 4)} bars")
        return " ".join(f"{self.state['labels'][k]}:{self.state['values'][k]}" for k in range(i, j + 1))

    @tool
    def draw_line(self, y: int) -> str:
        """Draw a horizontal line at height y and list the bars that rise above it.

        Args:
            y: the line's height
        """
        above = [lab for lab, v in zip(self.state["labels"], self.state["values"]) if v > y]
        return "above: " + (" ".join(above) if above else "none")

    @tool
    def terminate(self, answer: str) -> str:
        """Give the final answer and stop.

        Args:
            answer: the answer to the question
        """
        return f"answer: {answer}"


@TOOLSETS.register("chart", ChartToolsConfig)
def make_chart_tools(cfg: ChartToolsConfig) -> type[ToolSet]:
    """Bar-chart tools: point, read_value, zoom, draw_line, terminate."""
    return ChartTools
