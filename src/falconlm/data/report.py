"""stats.json -> a funnel chart (RefinedWeb Fig. 2 in spirit), a drop-reason table, dropped
examples (DIR/report.html + funnel.png) and a short text summary for the console."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from falconlm.atomic import atomic_write, atomic_write_text


def funnel(stats: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(step, documents remaining, characters remaining) after each step, starting with the input."""
    steps = stats["steps"]
    if not steps:
        return []
    first = steps[0]
    rows = [("input", first["docs_in"], first["chars_in"])]
    rows += [(s["name"], s["docs_out"], s["chars_out"]) for s in steps]
    return rows


def summary_text(stats: dict[str, Any]) -> str:
    """The console summary: documents and characters kept per step, the main drop reasons, MinHash clusters."""
    steps = stats["steps"]
    if not steps:
        return "no steps ran"
    start = max(steps[0]["docs_in"], 1)
    lines = [f"{'step':<16}{'docs in':>10}{'docs out':>10}{'kept %':>8}{'of input %':>11}{'chars kept %':>13}  top drop reasons"]
    for s in steps:
        kept = 100.0 * s["docs_out"] / max(s["docs_in"], 1)
        overall = 100.0 * s["docs_out"] / start
        chars = 100.0 * s["chars_out"] / max(s["chars_in"], 1)
        top = sorted(s["dropped"].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        reasons = ", ".join(f"{k} {v}" for k, v in top)
        lines.append(f"{s['name']:<16}{s['docs_in']:>10,}{s['docs_out']:>10,}{kept:>8.1f}{overall:>11.1f}{chars:>13.1f}  {reasons}")
        if s.get("cluster_size_histogram"):
            lines.append(f"  clusters: {s['clusters']:,}; sizes {s['cluster_size_histogram']}")
    return "\n".join(lines)


def plot_funnel(stats: dict[str, Any], path: Path) -> None:
    """Bar chart of documents and characters remaining after each step (% of input)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = funnel(stats)
    names = [r[0] for r in rows]
    d0 = max(rows[0][1], 1)
    c0 = max(rows[0][2], 1)
    docs = [100.0 * r[1] / d0 for r in rows]
    chars = [100.0 * r[2] / c0 for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], docs, width=0.4, label="documents", color="#3b6ea5")
    ax.bar([i + 0.2 for i in x], chars, width=0.4, label="characters", color="#e3a43b")
    for i, v in enumerate(docs):
        ax.text(i - 0.2, v + 1, f"{v:.0f}%", ha="center", fontsize=7)
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("% of input remaining")
    ax.set_ylim(0, 110)
    ax.set_title(f"{stats.get('recipe', 'recipe')}: what remains after each step")
    ax.legend()
    fig.tight_layout()
    try:
        # format= because the temp name does not end in .png
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None}))
    finally:
        plt.close(fig)


def write_report(out_dir: str | os.PathLike, stats: dict[str, Any]) -> Path:
    """Write DIR/funnel.png and DIR/report.html; returns the HTML path."""
    out = Path(out_dir)
    plot_funnel(stats, out / "funnel.png")
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>falconlm refine report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td.l,th.l{text-align:left}"
        "pre{white-space:pre-wrap;background:#f6f6f6;padding:6px;font-size:12px}</style></head><body>",
        f"<h1>Refinement report: {esc(str(stats.get('recipe')))}</h1>",
        f"<p>{len(stats.get('inputs', []))} input file(s), {stats.get('input_bytes', 0):,} bytes; "
        f"{len(stats.get('outputs', []))} output shard(s).</p>",
        "<h2>Funnel</h2><img src='funnel.png' alt='funnel chart'>",
        "<h2>Steps</h2><table><tr><th class=l>stage</th><th class=l>step</th><th>docs in</th><th>docs out</th>"
        "<th>chars in</th><th>chars out</th><th>docs kept %</th></tr>",
    ]
    for s in stats["steps"]:
        kept = 100.0 * s["docs_out"] / max(s["docs_in"], 1)
        parts.append(
            f"<tr><td class=l>{esc(str(s.get('stage', '')))}</td><td class=l>{esc(s['name'])}</td>"
            f"<td>{s['docs_in']:,}</td><td>{s['docs_out']:,}</td><td>{s['chars_in']:,}</td>"
            f"<td>{s['chars_out']:,}</td><td>{kept:.1f}</td></tr>"
        )
    # The MinHash stage adds a cluster-size histogram to its step.
    for s in stats["steps"]:
        if s.get("cluster_size_histogram"):
            parts.append(f"</table><h2>{esc(s['name'])}: cluster sizes</h2><table><tr><th>size</th><th>clusters</th></tr>")
            parts.extend(f"<tr><td>{esc(k)}</td><td>{v:,}</td></tr>" for k, v in s["cluster_size_histogram"].items())
    parts.append("</table><h2>Drop reasons</h2><table><tr><th class=l>step</th><th class=l>reason</th><th>documents</th></tr>")
    for s in stats["steps"]:
        for reason, n in sorted(s["dropped"].items(), key=lambda kv: (-kv[1], kv[0])):
            parts.append(f"<tr><td class=l>{esc(s['name'])}</td><td class=l>{esc(reason)}</td><td>{n:,}</td></tr>")
    parts.append("</table><h2>Examples of dropped documents</h2>")
    for key, items in sorted(stats.get("examples", {}).items()):
        parts.append(f"<h3>{esc(key)}</h3>")
        for ex in items:
            parts.append(f"<p><b>{esc(str(ex.get('url')))}</b> ({esc(str(ex.get('id')))})</p><pre>{esc(ex.get('text', ''))}</pre>")
    parts.append("</body></html>")
    return atomic_write_text(out / "report.html", "\n".join(parts))
