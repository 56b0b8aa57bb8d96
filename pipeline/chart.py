"""The differential as a horizontal bar chart with 95 % CI whiskers, drawn once as shapes.

:func:`chart_shapes` lays the chart out in abstract units (origin top left);
:func:`to_svg` writes those shapes as SVG for the pages and the PDF writer
draws the very same shapes, so screen and paper show one picture. Each bar
carries its numbers as ``data-*`` attributes (tests read them back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

LABEL_W, VALUE_W, ROW_H, TOP, AXIS_H = 150.0, 70.0, 30.0, 10.0, 30.0


@dataclass(frozen=True)
class Shape:
    kind: str  # rect | line | text
    x: float
    y: float
    x2: float = 0.0  # rect: width; line: end x
    y2: float = 0.0  # rect: height; line: end y
    css: str = ""  # class: bar, flag, ref, whisker, axis, grid, label, value, tick
    text: str = ""
    anchor: str = "start"
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Chart:
    width: float
    height: float
    shapes: list[Shape]
    title: str


def _scale_max(rows: list[dict], reference: dict) -> float:
    top = max([r["ci95_high"] for r in rows] + [(reference.get(r["cell_type"]) or {}).get("high") or 0 for r in rows] + [10.0])
    return min(100.0, math.ceil(top / 10.0) * 10.0)


def chart_shapes(rows: list[dict], reference: dict, width: float = 640.0) -> Chart:
    """Shapes of the chart of ``differential`` rows; ``reference`` maps cell type -> {low, high, flag}."""
    plot_w = width - LABEL_W - VALUE_W
    vmax = _scale_max(rows, reference)

    def x(percent: float) -> float:
        return LABEL_W + plot_w * max(0.0, min(percent, vmax)) / vmax

    shapes: list[Shape] = []
    bottom = TOP + ROW_H * len(rows)
    step = 10.0 if vmax <= 50 else 20.0
    for i in range(int(vmax // step) + 1):
        tick = i * step
        shapes.append(Shape("line", x(tick), TOP, x(tick), bottom, "grid"))
        shapes.append(Shape("text", x(tick), bottom + 16, text=f"{tick:g}", css="tick", anchor="middle"))
    shapes.append(Shape("text", LABEL_W + plot_w / 2, bottom + AXIS_H - 2, text="% of white cells (bar) with 95 % interval (whisker)",
                        css="tick", anchor="middle"))
    for i, row in enumerate(rows):
        y = TOP + ROW_H * i
        mid = y + ROW_H / 2
        ref = reference.get(row["cell_type"]) or {}
        if ref.get("low") is not None:
            shapes.append(Shape("rect", x(ref["low"]), y + 2, max(x(ref["high"]) - x(ref["low"]), 1.5), ROW_H - 4, "ref"))
        data = {"cell-type": row["cell_type"], "count": str(row["count"]), "percent": f"{row['percent']:.1f}",
                "ci-low": f"{row['ci95_low']:.1f}", "ci-high": f"{row['ci95_high']:.1f}"}
        shapes.append(Shape("rect", LABEL_W, mid - 8, x(row["percent"]) - LABEL_W, 16, "bar flag" if ref.get("flag") else "bar", data=data))
        lo, hi = x(row["ci95_low"]), x(row["ci95_high"])
        shapes.append(Shape("line", lo, mid, hi, mid, "whisker"))
        shapes.append(Shape("line", lo, mid - 6, lo, mid + 6, "whisker"))
        shapes.append(Shape("line", hi, mid - 6, hi, mid + 6, "whisker"))
        shapes.append(Shape("text", LABEL_W - 8, mid + 4, text=row["cell_type"], css="label", anchor="end"))
        flag = {"high": " H", "low": " L"}.get(ref.get("flag") or "", "")
        shapes.append(Shape("text", width - VALUE_W + 6, mid + 4, text=f"{row['percent']:.1f} %{flag}", css="value"))
    shapes.append(Shape("line", LABEL_W, TOP, LABEL_W, bottom, "axis"))
    title = "; ".join(f"{r['cell_type']} {r['percent']:.1f} % (95 % CI {r['ci95_low']:.1f}-{r['ci95_high']:.1f})" for r in rows)
    return Chart(width, bottom + AXIS_H + 4, shapes, title)


def to_svg(chart: Chart) -> str:
    """Inline SVG (no external assets); styling comes from the page's CSS classes with inline fallbacks."""
    fills = {"bar": "#3a6ea5", "bar flag": "#b5472f", "ref": "#dcefdc"}
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {chart.width:g} {chart.height:g}" '
             f'role="img" aria-label="{escape(chart.title)}"><title>{escape(chart.title)}</title>']
    for s in chart.shapes:
        data = "".join(f' data-{k}="{escape(v)}"' for k, v in s.data.items())
        if s.kind == "rect":
            parts.append(f'<rect class="{s.css}" x="{s.x:.1f}" y="{s.y:.1f}" width="{max(s.x2, 0):.1f}" height="{s.y2:.1f}" '
                         f'fill="{fills.get(s.css, "#888")}"{data}/>')
        elif s.kind == "line":
            stroke = {"grid": "#e3e3e3", "axis": "#555"}.get(s.css, "#111")
            parts.append(f'<line class="{s.css}" x1="{s.x:.1f}" y1="{s.y:.1f}" x2="{s.x2:.1f}" y2="{s.y2:.1f}" stroke="{stroke}" '
                         f'stroke-width="{1.5 if s.css == "whisker" else 1}"/>')
        else:
            parts.append(f'<text class="{s.css}" x="{s.x:.1f}" y="{s.y:.1f}" text-anchor="{s.anchor}" font-size="13" '
                         f'font-family="sans-serif">{escape(s.text)}</text>')  # 13 units: about 11 px at the page's width
    parts.append("</svg>")
    return "".join(parts)
