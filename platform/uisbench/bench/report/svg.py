"""A small inline-SVG plotting kit for the report: axes with linear or log scales, ticks, grid,
labels, points with error bars, lines and a legend. Text stays text (searchable, crisp at any zoom);
every mark can carry a tooltip (``<title>``). No dependency, no JavaScript."""

from __future__ import annotations

import html
import math
from typing import Any

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd"]
SHAPES = ["circle", "square", "triangle", "diamond", "cross"]
FONT = "font-family='system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif'"


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


#: font size (px) of axis labels (``.label`` in the SVG style)
LABEL_SIZE = 12.5


def text_width(text: str, size: float = 12) -> float:
    return 0.56 * size * len(text)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + 1e-9 * step:
        out.append(round(v, 10))
        v += step
    return out


def log_ticks(lo: float, hi: float) -> list[float]:
    wide = hi / lo > 300
    for mantissas in (((1,),) if wide else ()) + ((1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9)):
        out = []
        for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
            out += [float(f"{m * 10.0**e:.6g}") for m in mantissas if lo <= m * 10.0**e <= hi]
        if len(out) >= 3 or (len(out) >= 2 and mantissas[-1] == 9):
            return out
    return [float(f"{lo:.2g}"), float(f"{hi:.2g}")]


def tick_text(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:g}"
    return f"{v:.4g}"  # 0.025 stays 0.025: two decimals printed the 0.025 grid as 0.03, 0.05, 0.07


class Axes:
    """One plot: ``width x height`` px with the plot area inside margins; data -> px by ``sx``/``sy``."""

    def __init__(self, width: int, height: int, *, x: tuple[float, float], y: tuple[float, float], xlog: bool = False,
                 ylog: bool = False, margin: tuple[int, int, int, int] = (34, 20, 52, 62), title: str = "") -> None:
        self.width, self.height = width, height
        self.top, self.right, self.bottom, self.left = margin
        self.x0, self.x1 = x
        self.y0, self.y1 = y
        self.xlog, self.ylog = xlog, ylog
        self.parts: list[str] = []
        self.title = title
        #: whiskers are context, not the message: drawn light
        self.err_opacity = 0.55

    # -- scales ---------------------------------------------------------------------------------

    @property
    def pw(self) -> float:
        return self.width - self.left - self.right

    @property
    def ph(self) -> float:
        return self.height - self.top - self.bottom

    def _frac(self, v: float, lo: float, hi: float, log: bool) -> float:
        if log:
            v, lo, hi = (math.log10(max(t, 1e-12)) for t in (v, lo, hi))
        return 0.5 if hi == lo else (v - lo) / (hi - lo)

    def sx(self, v: float) -> float:
        return self.left + self._frac(v, self.x0, self.x1, self.xlog) * self.pw

    def sy(self, v: float) -> float:
        return self.top + (1 - self._frac(v, self.y0, self.y1, self.ylog)) * self.ph

    # -- furniture ------------------------------------------------------------------------------

    def _label_lines(self, text: str) -> list[str]:
        """An x-axis label on one line, or on two when one line is wider than the picture: split at the
        space before a `` (`` or after a ``,`` that makes the longer line shortest."""
        cuts = [i for i in range(1, len(text) - 1) if text[i] == " " and (text[i + 1] == "(" or text[i - 1] == ",")]
        if text_width(text, LABEL_SIZE) <= self.width - 8 or not cuts:
            return [text]
        cut = min(cuts, key=lambda i: (max(i, len(text) - i - 1), i))
        return [text[:cut], text[cut + 1:]]

    def frame(self, xlabel: str, ylabel: str, *, xticks: list[float] | None = None, yticks: list[float] | None = None,
              xlabels: dict[float, str] | None = None) -> None:
        """Grid, ticks (``xlabels`` renames some x ticks), the plot's box and the axis labels."""
        xt = xticks if xticks is not None else (log_ticks(self.x0, self.x1) if self.xlog else nice_ticks(self.x0, self.x1))
        yt = yticks if yticks is not None else (log_ticks(self.y0, self.y1) if self.ylog else nice_ticks(self.y0, self.y1))
        bottom, left = self.top + self.ph, self.left
        for v in xt:
            px = self.sx(v)
            self.parts.append(f"<line x1='{px:.1f}' y1='{self.top}' x2='{px:.1f}' y2='{bottom:.1f}' class='grid'/>")
            text = (xlabels or {}).get(v, tick_text(v))
            self.parts.append(f"<text x='{px:.1f}' y='{bottom + 15:.1f}' text-anchor='middle' class='tick'>{esc(text)}</text>")
        for v in yt:
            py = self.sy(v)
            self.parts.append(f"<line x1='{left}' y1='{py:.1f}' x2='{left + self.pw:.1f}' y2='{py:.1f}' class='grid'/>")
            self.parts.append(f"<text x='{left - 6}' y='{py + 4:.1f}' text-anchor='end' class='tick'>{tick_text(v)}</text>")
        self.parts.append(f"<rect x='{left}' y='{self.top}' width='{self.pw:.1f}' height='{self.ph:.1f}' class='box'/>")
        for k, line in enumerate(reversed(self._label_lines(xlabel))):
            # centred under the plot, but moved in so that it is never cut at the picture's edge
            half = text_width(line, LABEL_SIZE) / 2
            cx = min(max(left + self.pw / 2, half + 4), self.width - half - 4)
            self.parts.append(f"<text x='{cx:.1f}' y='{self.height - 12 - 14 * k}' text-anchor='middle' class='label'>{esc(line)}</text>")
        cy = self.top + self.ph / 2
        self.parts.append(f"<text transform='translate(16 {cy:.1f}) rotate(-90)' text-anchor='middle' class='label'>{esc(ylabel)}</text>")

    def add(self, svg: str) -> None:
        self.parts.append(svg)

    def line(self, points: list[tuple[float, float]], colour: str = "#444", *, dash: str | None = None, width: float = 1.5,
             tip: str | None = None) -> None:
        if len(points) < 2:
            return
        d = " ".join(f"{self.sx(x):.1f},{self.sy(y):.1f}" for x, y in points)
        extra = f" stroke-dasharray='{dash}'" if dash else ""
        title = f"<title>{esc(tip)}</title>" if tip else ""
        self.parts.append(f"<polyline points='{d}' fill='none' stroke='{colour}' stroke-width='{width}'{extra}>{title}</polyline>")

    def errorbar(self, x: float, y: float, *, xerr: list[float] | None = None, yerr: list[float] | None = None,
                 colour: str = "#444") -> None:
        px, py = self.sx(x), self.sy(y)
        if yerr:
            a, b = self.sy(yerr[0]), self.sy(yerr[1])
            self.parts.append(f"<path d='M{px:.1f},{a:.1f}V{b:.1f}M{px - 3:.1f},{a:.1f}h6M{px - 3:.1f},{b:.1f}h6' "
                              f"stroke='{colour}' stroke-width='1' opacity='{self.err_opacity}' fill='none'/>")
        if xerr:
            a, b = self.sx(xerr[0]), self.sx(xerr[1])
            self.parts.append(f"<path d='M{a:.1f},{py:.1f}H{b:.1f}M{a:.1f},{py - 3:.1f}v6M{b:.1f},{py - 3:.1f}v6' "
                              f"stroke='{colour}' stroke-width='1' opacity='{self.err_opacity}' fill='none'/>")

    def point(self, x: float, y: float, *, colour: str, shape: str = "circle", hollow: bool = False, size: float = 5.5,
              tip: str = "", ring: bool = False) -> None:
        self.parts.append(marker(self.sx(x), self.sy(y), colour=colour, shape=shape, hollow=hollow, size=size, tip=tip))
        if ring:
            self.parts.append(f"<circle cx='{self.sx(x):.1f}' cy='{self.sy(y):.1f}' r='{size + 4:.1f}' fill='none' stroke='#111' stroke-width='1.2'/>")

    def text(self, x: float, y: float, text: str, *, anchor: str = "start", dx: float = 0, dy: float = 0, cls: str = "note") -> None:
        self.parts.append(f"<text x='{self.sx(x) + dx:.1f}' y='{self.sy(y) + dy:.1f}' text-anchor='{anchor}' class='{cls}'>{esc(text)}</text>")

    def render(self, legend: list[tuple[str, str, str, bool]] | None = None, *, legend_title: str = "", plot_id: str = "") -> str:
        """The ``<svg>``; ``legend`` entries ``(text, colour, shape, hollow)`` go in the right margin."""
        parts = list(self.parts)
        if legend:
            x = self.left + self.pw + 18
            y = self.top + 6
            if legend_title:
                parts.append(f"<text x='{x:.1f}' y='{y + 4:.1f}' class='legendtitle'>{esc(legend_title)}</text>")
                y += 18
            for text, colour, shape, hollow in legend:
                if shape.startswith("line"):
                    dash = " stroke-dasharray='5 3'" if shape == "line-dashed" else ""
                    parts.append(f"<line x1='{x - 6:.1f}' y1='{y:.1f}' x2='{x + 8:.1f}' y2='{y:.1f}' stroke='{colour}' stroke-width='2'{dash}/>")
                elif shape == "bar":
                    parts.append(f"<rect x='{x - 6:.1f}' y='{y - 5:.1f}' width='14' height='10' fill='{colour}'/>")
                else:
                    parts.append(marker(x, y, colour=colour, shape=shape, hollow=hollow, size=5))
                parts.append(f"<text x='{x + 14:.1f}' y='{y + 4:.1f}' class='legend'>{esc(text)}</text>")
                y += 17
        title = f"<text x='12' y='18' class='title'>{esc(self.title)}</text>" if self.title else ""
        ident = f" id='{esc(plot_id)}' data-plot='{esc(plot_id)}'" if plot_id else ""
        return (f"<svg xmlns='http://www.w3.org/2000/svg'{ident} class='plot' viewBox='0 0 {self.width} {self.height}' "
                f"width='{self.width}' height='{self.height}' role='img' {FONT}>{STYLE}{title}{''.join(parts)}</svg>")


STYLE = ("<style>.grid{stroke:#e6e6e6;stroke-width:1}.box{fill:none;stroke:#999;stroke-width:1}"
         ".tick{font-size:11px;fill:#555}.label{font-size:12.5px;fill:#222}.title{font-size:14px;font-weight:600;fill:#111}"
         ".note{font-size:11px;fill:#444}.legend{font-size:11.5px;fill:#222}.legendtitle{font-size:11.5px;font-weight:600;fill:#222}"
         ".faint{font-size:11px;fill:#999;font-style:italic}</style>")


def marker(px: float, py: float, *, colour: str, shape: str = "circle", hollow: bool = False, size: float = 5.5, tip: str = "") -> str:
    fill = "white" if hollow else colour
    style = f"fill='{fill}' stroke='{colour}' stroke-width='{1.8 if hollow else 1}'"
    title = f"<title>{esc(tip)}</title>" if tip else ""
    s = size
    if shape == "square":
        body = f"<rect x='{px - s * 0.85:.1f}' y='{py - s * 0.85:.1f}' width='{s * 1.7:.1f}' height='{s * 1.7:.1f}' {style}>{title}</rect>"
    elif shape == "triangle":
        body = f"<path d='M{px:.1f},{py - s * 1.1:.1f}L{px + s:.1f},{py + s * 0.75:.1f}L{px - s:.1f},{py + s * 0.75:.1f}Z' {style}>{title}</path>"
    elif shape == "diamond":
        body = f"<path d='M{px:.1f},{py - s * 1.15:.1f}L{px + s:.1f},{py:.1f}L{px:.1f},{py + s * 1.15:.1f}L{px - s:.1f},{py:.1f}Z' {style}>{title}</path>"
    elif shape == "cross":
        body = (f"<path d='M{px - s:.1f},{py - s:.1f}L{px + s:.1f},{py + s:.1f}M{px - s:.1f},{py + s:.1f}L{px + s:.1f},{py - s:.1f}' "
                f"stroke='{colour}' stroke-width='2.2' fill='none'>{title}</path>")
    else:
        body = f"<circle cx='{px:.1f}' cy='{py:.1f}' r='{s:.1f}' {style}>{title}</circle>"
    return body


def empty(width: int, height: int, title: str, message: str, plot_id: str = "") -> str:
    """A placeholder with the reason a plot has nothing to show."""
    ident = f" id='{esc(plot_id)}' data-plot-empty='{esc(plot_id)}'" if plot_id else ""
    return (f"<svg xmlns='http://www.w3.org/2000/svg'{ident} class='plot empty' viewBox='0 0 {width} {height}' width='{width}' "
            f"height='{height}' {FONT}>{STYLE}<text x='12' y='20' class='title'>{esc(title)}</text>"
            f"<text x='12' y='48' class='faint'>{esc(message)}</text></svg>")
