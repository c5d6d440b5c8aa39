#!/usr/bin/env python3
"""Draws the README's picture, assets/bytes-per-message.svg, from the measured
table in docs/operations.md ("Seeing the savings": wire bytes per delivered
message by transport, 100-byte payload).

  python3 scripts/docs/bytes-chart.py          # rewrites the SVG
  python3 scripts/docs/bytes-chart.py --check  # exit 1 if the SVG is stale

Only the standard library. tests/readme.rs also checks that every figure of
the table appears in the SVG, so the picture can't drift from the measurement.
"""
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
TABLE_DOC = os.path.join(ROOT, "docs", "operations.md")
SVG = os.path.join(ROOT, "assets", "bytes-per-message.svg")
HEADER = "| transport | wire bytes per delivered message |"
PAYLOAD = 100.0


def rows():
    """(label, wire bytes) per transport, in table order."""
    lines = open(TABLE_DOC, encoding="utf-8").read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    out = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out.append((cells[0], float(cells[1])))
    if not out:
        sys.exit(f"no rows under {HEADER!r} in {TABLE_DOC}")
    return out


def svg(data):
    width, left, right, bar_h, gap, top = 720, 250, 110, 34, 18, 58
    height = top + len(data) * (bar_h + gap) + 44
    scale = (width - left - right) / max(v for _, v in data)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="system-ui, sans-serif" font-size="14">',
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        '<text x="16" y="26" font-size="17" font-weight="600" fill="#1d2330">'
        "Bytes on the wire per delivered message (100-byte payload)</text>",
        f'<text x="16" y="46" font-size="12" fill="#667085">measured with scripts/savings.py; '
        f'table in docs/operations.md</text>',
    ]
    for i, (label, wire) in enumerate(data):
        y = top + i * (bar_h + gap)
        pw, ow = PAYLOAD * scale, (wire - PAYLOAD) * scale
        out += [
            f'<text x="{left - 10}" y="{y + bar_h / 2 + 5:.1f}" text-anchor="end" fill="#1d2330">{label}</text>',
            f'<rect x="{left}" y="{y}" width="{pw:.1f}" height="{bar_h}" fill="#2458d3"/>',
            f'<rect x="{left + pw:.1f}" y="{y}" width="{ow:.1f}" height="{bar_h}" fill="#f04438"/>',
            f'<text x="{left + pw + ow + 8:.1f}" y="{y + bar_h / 2 + 5:.1f}" font-weight="600" '
            f'fill="#1d2330">{wire:.1f} B</text>',
        ]
    y = top + len(data) * (bar_h + gap) + 10
    out += [
        f'<rect x="{left}" y="{y}" width="12" height="12" fill="#2458d3"/>',
        f'<text x="{left + 18}" y="{y + 11}" font-size="12" fill="#1d2330">payload</text>',
        f'<rect x="{left + 90}" y="{y}" width="12" height="12" fill="#f04438"/>',
        f'<text x="{left + 108}" y="{y + 11}" font-size="12" fill="#1d2330">'
        "overhead: headers, framing, envelope</text>",
        "</svg>",
    ]
    return "\n".join(out) + "\n"


def main():
    text = svg(rows())
    if "--check" in sys.argv[1:]:
        current = open(SVG, encoding="utf-8").read() if os.path.exists(SVG) else ""
        if current != text:
            print(f"{SVG} is stale: run python3 scripts/docs/bytes-chart.py")
            return 1
        return 0
    with open(SVG, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
