"""Inline SVG scatter plots of a Pareto frontier: no JavaScript, no plotting library, works offline."""

from __future__ import annotations

import math
from html import escape

from smallfit.metrics import METRICS
from smallfit.report.pareto import Frontier, Point

PALETTE = ("#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d", "#4d7c0f")
GREY = "#9ca3af"
_W, _H = 520, 340
_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 24, 16, 58


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5 or 5 times a power of ten) covering [low, high]."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(low / step) * step
    ticks, t = [], first
    while t <= high + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < high:
        ticks.append(round(t, 12))
    return ticks


def tick_label(metric: str, value: float) -> str:
    """Short axis label in the metric's unit."""
    unit = METRICS[metric].unit if metric in METRICS else ""
    if unit == "bytes":
        for suffix, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:g} {suffix}"
        return f"{value:g} B"
    if unit == "s":
        return f"{value * 1000:g} ms" if abs(value) < 1 else f"{value:g} s"
    return f"{value:g}"


def axis_title(metric: str) -> str:
    """``latency_s_p95 (s, lower is better)``."""
    info = METRICS.get(metric)
    if info is None:
        return metric
    better = "higher is better" if info.higher_is_better else "lower is better"
    return f"{metric} ({info.unit + ', ' if info.unit else ''}{better})"


def _scale(lo: float, hi: float, a: float, b: float) -> tuple[float, float]:
    span = hi - lo or 1.0
    return (b - a) / span, a - lo * (b - a) / span


def _frontier_path(points: list[Point], sx: tuple[float, float], sy: tuple[float, float]) -> str:
    """The dashed line through the frontier of the point estimates."""
    front = sorted((p for p in points if not p.dominated_by_estimates), key=lambda p: (p.x, p.y))
    if len(front) < 2:
        return ""
    coords = " ".join(f"{p.x * sx[0] + sx[1]:.1f},{p.y * sy[0] + sy[1]:.1f}" for p in front)
    return f'<polyline class="frontier" points="{coords}" fill="none" stroke="#111827" stroke-width="1.5" ' \
           f'stroke-dasharray="5 4" opacity="0.55"/>'


def _ends(value: float, low: float | None, high: float | None) -> list[float]:
    return [v for v in (value, low, high) if v is not None and math.isfinite(v)]


def _bar(p: Point, pos: tuple[float, float], sx: tuple[float, float], sy: tuple[float, float],
         colour: str) -> str:
    """Error bars of a point's 95% intervals, on each axis that has one; an end open above is drawn
    to the plot's edge with an arrowhead (the interval goes on beyond it)."""
    x, y = pos
    out = []
    edges = {"x": (_LEFT, _W - _RIGHT), "y": (_H - _BOTTOM, _TOP)}  # pixel of the axis' low, high end
    for axis, low, high, scale in (("x", p.x_low, p.x_high, sx), ("y", p.y_low, p.y_high, sy)):
        if low is None or high is None:
            continue
        lo_px = low * scale[0] + scale[1]
        hi_px = edges[axis][1] if math.isinf(high) else high * scale[0] + scale[1]
        if axis == "x":
            out.append(f'<line x1="{lo_px:.1f}" y1="{y:.1f}" x2="{hi_px:.1f}" y2="{y:.1f}" stroke="{colour}" '
                       'stroke-width="1.5" opacity="0.6" class="error-bar x"/>')
            tip = (f'<path d="M{hi_px - 7:.1f},{y - 4:.1f} L{hi_px:.1f},{y:.1f} L{hi_px - 7:.1f},{y + 4:.1f}" '
                   f'fill="none" stroke="{colour}" stroke-width="1.5" class="open-end"/>')
            caps = [f'<line x1="{v:.1f}" y1="{y - 4:.1f}" x2="{v:.1f}" y2="{y + 4:.1f}" stroke="{colour}" '
                    'stroke-width="1.5" opacity="0.6"/>' for v in (lo_px, hi_px)]
        else:
            out.append(f'<line x1="{x:.1f}" y1="{lo_px:.1f}" x2="{x:.1f}" y2="{hi_px:.1f}" stroke="{colour}" '
                       'stroke-width="1.5" opacity="0.6" class="error-bar y"/>')
            tip = (f'<path d="M{x - 4:.1f},{hi_px + 7:.1f} L{x:.1f},{hi_px:.1f} L{x + 4:.1f},{hi_px + 7:.1f}" '
                   f'fill="none" stroke="{colour}" stroke-width="1.5" class="open-end"/>')
            caps = [f'<line x1="{x - 4:.1f}" y1="{v:.1f}" x2="{x + 4:.1f}" y2="{v:.1f}" stroke="{colour}" '
                    'stroke-width="1.5" opacity="0.6"/>' for v in (lo_px, hi_px)]
        out.extend([caps[0], tip] if math.isinf(high) else caps)
    return "".join(out)


def _labels(points: list[Point], pos: dict[str, tuple[float, float]], colours: dict[str, str],
            radii: dict[str, float] | None = None) -> list[str]:
    """A label beside each point, moved up or down (and kept inside the plot) until its box
    overlaps no label placed before it; a box is estimated from the text length."""
    placed: list[tuple[float, float, float]] = []  # x0, x1, baseline
    out = []
    for p in sorted(points, key=lambda q: (q.dominated, pos[q.candidate][1])):
        x, y = pos[p.candidate]
        text = p.candidate + (" (dominated)" if p.dominated else " (not distinguishable)" if p.indistinct_from
                              else "")
        width = 7.6 * len(text) + 6  # bold 12px sans, generously
        gap = 10.0 + max(0.0, (radii or {}).get(p.candidate, 7.0) - 7.0)  # clear of a bigger bubble
        anchor, dx = ("end", -gap) if x + gap + width > _W - _RIGHT else ("start", gap)
        x0 = x + dx - width if anchor == "end" else x + dx
        for shift in (0, -16, 16, -32, 32, -48, 48, -64, 64):
            ly = min(max(y + 4 + shift, _TOP + 12), _H - _BOTTOM - 4)
            if not any(x0 < ox1 and ox0 < x0 + width and abs(ly - oy) < 14 for ox0, ox1, oy in placed):
                break
        placed.append((x0, x0 + width, ly))
        colour = GREY if p.dominated else colours.get(p.candidate, "#111827")
        out.append(f'<text x="{x + dx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" class="label" fill="{colour}">'
                   f"{escape(text)}</text>")
    return out


def _axes(xt: list[float], yt: list[float], sx: tuple[float, float], sy: tuple[float, float],
          x_ticks: list[str], y_ticks: list[str], x_title: str, y_title: str) -> list[str]:
    """Grid lines with their tick labels, and the two axis titles, of a plot of the standard size."""
    parts = []
    for t, label in zip(xt, x_ticks, strict=True):
        x = t * sx[0] + sx[1]
        parts.append(f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{_H - _BOTTOM}" stroke="#e5e7eb"/>'
                     f'<text x="{x:.1f}" y="{_H - _BOTTOM + 18}" text-anchor="middle" class="tick">'
                     f"{escape(label)}</text>")
    for t, label in zip(yt, y_ticks, strict=True):
        y = t * sy[0] + sy[1]
        parts.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_W - _RIGHT}" y2="{y:.1f}" stroke="#e5e7eb"/>'
                     f'<text x="{_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end" class="tick">{escape(label)}</text>')
    parts.append(f'<text x="{(_LEFT + _W - _RIGHT) / 2}" y="{_H - 12}" text-anchor="middle" class="axis">'
                 f"{escape(x_title)}</text>")
    parts.append(f'<text transform="translate(16 {(_TOP + _H - _BOTTOM) / 2}) rotate(-90)" text-anchor="middle" '
                 f'class="axis">{escape(y_title)}</text>')
    return parts


def scatter(frontier: Frontier, colours: dict[str, str], radii: dict[str, float] | None = None) -> str:
    """One frontier as an SVG scatter with each figure's 95% interval as an error bar: frontier
    candidates in colour, those the point estimates alone put behind another half-filled (not
    distinguishable), the point-estimate frontier joined by a dashed line, candidates dominated
    beyond the intervals hollow and grey; every point labelled with its candidate. ``radii``
    gives a point its own radius (a bubble chart: the board sizes points by peak memory)."""
    size = radii or {}
    pts = frontier.points
    xs = [v for p in pts for v in _ends(p.x, p.x_low, p.x_high)]
    ys = [v for p in pts for v in _ends(p.y, p.y_low, p.y_high)]
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    sx = _scale(xt[0], xt[-1], _LEFT, _W - _RIGHT)
    sy = _scale(yt[0], yt[-1], _H - _BOTTOM, _TOP)
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" role="img" class="plot" '
             f'aria-label="{escape(frontier.task)}: {escape(frontier.y)} against {escape(frontier.x)}">'),
             (f'<rect x="{_LEFT}" y="{_TOP}" width="{_W - _LEFT - _RIGHT}" height="{_H - _TOP - _BOTTOM}" '
             'fill="#fafafa" stroke="#d1d5db"/>')]
    parts += _axes(xt, yt, sx, sy, [tick_label(frontier.x, t) for t in xt], [tick_label(frontier.y, t) for t in yt],
                   axis_title(frontier.x), axis_title(frontier.y))
    parts.append(_frontier_path(pts, sx, sy))
    pos = {p.candidate: (p.x * sx[0] + sx[1], p.y * sy[0] + sy[1]) for p in pts}
    for p in pts:
        parts.append(_bar(p, pos[p.candidate], sx, sy, GREY if p.dominated else colours.get(p.candidate, "#111827")))
    for p in sorted(pts, key=lambda q: not q.dominated):  # frontier points drawn on top
        x, y = pos[p.candidate]
        if p.dominated:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{size.get(p.candidate, 6):g}" fill="#fff" '
                         f'stroke="{GREY}" stroke-width="2" '
                         f'class="point dominated"><title>{escape(p.candidate)}: dominated by '
                         f'{escape(", ".join(p.dominated_by))}</title></circle>')
        elif p.indistinct_from:
            colour = colours.get(p.candidate, "#111827")
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{size.get(p.candidate, 7):g}" fill="{colour}" '
                         'fill-opacity="0.35" '
                         f'stroke="{colour}" stroke-width="2" class="point indistinct"><title>{escape(p.candidate)}: '
                         f'not distinguishable from {escape(", ".join(p.indistinct_from))}</title></circle>')
        else:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{size.get(p.candidate, 7):g}" '
                         f'fill="{colours.get(p.candidate, "#111827")}" '
                         f'stroke="#fff" stroke-width="1.5" class="point frontier-point">'
                         f"<title>{escape(p.candidate)}: on the frontier</title></circle>")
    parts.extend(_labels(pts, pos, colours, size))
    parts.append("</svg>")
    return "".join(parts)


class Series:
    """A line of a line chart: points joined in order, solid, dashed or dotted."""

    def __init__(self, name: str, xs: list[float], ys: list[float], colour: str, dash: str = "") -> None:
        self.name, self.xs, self.ys, self.colour, self.dash = name, xs, ys, colour, dash


class Mark:
    """A labelled point of a line chart, with an optional 95% interval on y."""

    def __init__(self, name: str, x: float, y: float, colour: str, y_low: float | None = None,
                 y_high: float | None = None) -> None:
        self.name, self.x, self.y, self.colour, self.y_low, self.y_high = name, x, y, colour, y_low, y_high


def line_chart(title: str, x_title: str, y_title: str, series: list[Series], marks: list[Mark],
               x_label: str = "") -> str:
    """An SVG line chart: each series a polyline, each mark a labelled dot with its interval,
    a legend of the series below the plot; ``x_label`` picks the tick format (a metric name)."""
    xs = [x for s in series for x in s.xs] + [m.x for m in marks]
    ys = [y for s in series for y in s.ys] + [v for m in marks for v in _ends(m.y, m.y_low, m.y_high)]
    xs, ys = [x for x in xs if math.isfinite(x)], [y for y in ys if math.isfinite(y)]
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    height = _H + 18 * len(series)
    sx = _scale(xt[0], xt[-1], _LEFT, _W - _RIGHT)
    sy = _scale(yt[0], yt[-1], _H - _BOTTOM, _TOP)
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" role="img" class="plot" '
              f'aria-label="{escape(title)}">'),
             (f'<rect x="{_LEFT}" y="{_TOP}" width="{_W - _LEFT - _RIGHT}" height="{_H - _TOP - _BOTTOM}" '
              'fill="#fafafa" stroke="#d1d5db"/>')]
    parts += _axes(xt, yt, sx, sy, [tick_label(x_label, t) for t in xt], [f"{t:g}" for t in yt], x_title, y_title)
    for i, s in enumerate(series):
        pts = " ".join(f"{x * sx[0] + sx[1]:.1f},{y * sy[0] + sy[1]:.1f}" for x, y in zip(s.xs, s.ys, strict=True))
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{s.colour}" stroke-width="2"{dash} '
                     f'class="series"><title>{escape(s.name)}</title></polyline>')
        ly = _H + 4 + 18 * i
        parts.append(f'<line x1="{_LEFT}" y1="{ly}" x2="{_LEFT + 28}" y2="{ly}" stroke="{s.colour}" stroke-width="2"'
                     f'{dash}/><text x="{_LEFT + 36}" y="{ly + 4}" class="tick">{escape(s.name)}</text>')
    for m in marks:
        x, y = m.x * sx[0] + sx[1], m.y * sy[0] + sy[1]
        if m.y_low is not None and m.y_high is not None:
            y0, y1 = m.y_low * sy[0] + sy[1], m.y_high * sy[0] + sy[1]
            parts.append(f'<line x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y1:.1f}" stroke="{m.colour}" '
                         'stroke-width="1.5"/>')
        right = x > _W - _RIGHT - 170  # near the right edge the label reads leftwards
        lx, anchor = (x - 9, "end") if right else (x + 9, "start")
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{m.colour}" stroke="#fff" stroke-width="1.5" '
                     f'class="point mark"><title>{escape(m.name)}</title></circle>'
                     f'<text x="{lx:.1f}" y="{y - 8:.1f}" text-anchor="{anchor}" class="label">{escape(m.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
