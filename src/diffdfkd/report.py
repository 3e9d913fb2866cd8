"""The run report: one ``Report`` (tables, figures, notes, the resolved config) rendered twice, as
Markdown and as a self-contained HTML page (images inline)."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from diffdfkd.config import to_dict


def image_grid(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int = 8
) -> np.ndarray:
    """One row per class of up to ``per_class`` images ``[N, 3, H, W]`` in [0, 1] -> uint8 ``[H', W', 3]``."""
    _, channels, height, width = images.shape
    grid = np.full((num_classes * (height + 2), per_class * (width + 2), 3), 255, dtype=np.uint8)
    for k in range(num_classes):
        for j, i in enumerate((labels == k).nonzero().flatten()[:per_class].tolist()):
            tile = (images[i].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            top, left = k * (height + 2) + 1, j * (width + 2) + 1
            grid[top : top + height, left : left + width] = tile if channels == 3 else tile[..., :1]
    return grid


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def plot_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Plot every numeric column of a training ``metrics.csv`` against epoch, one panel each."""
    if not metrics_csv.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with metrics_csv.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    columns = [c for c in rows[0] if c != "epoch" and _is_number(rows[0][c])]
    epochs = [float(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 2.8), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        ax.plot(epochs, [float(r[column]) if _is_number(r[column]) else np.nan for r in rows])
        ax.set_title(column, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png


def _is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Table:
    """A titled table: ``header`` and ``rows`` of cells (shown with ``str``)."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Figure:
    """An image file of the report and its caption."""

    path: Path
    caption: str


@dataclass(frozen=True)
class Report:
    """What a run report says, before it is rendered (``render_markdown``, ``render_html``)."""

    title: str
    protocol: str
    tables: tuple[Table, ...]
    figures: tuple[Figure, ...]  # the image grids, shown side by side in HTML
    curves: Path | None
    notes: tuple[str, ...]
    config_yaml: str


def render_markdown(report: Report) -> str:
    """``report.md``: images referenced by file name beside it."""
    md = [f"# {report.title}", "", report.protocol, ""]
    for table in report.tables:
        lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table.rows]
        md += [f"## {table.title}", "", "\n".join(lines), ""]
    for figure in report.figures:
        md += [f"## {figure.caption}", "", f"![{figure.path.stem}]({figure.path.name})", ""]
    if report.curves:
        md += ["## Training curves", "", f"![curves]({report.curves.name})", ""]
    md += [f"- {note}" for note in report.notes] + ([""] if report.notes else [])
    md += ["## Resolved config", "", "```yaml", report.config_yaml.rstrip(), "```", ""]
    return "\n".join(md)


def render_html(report: Report) -> str:
    """``report.html``: one self-contained page, the images inline as data URLs."""

    def img(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img src="data:image/png;base64,{data}" style="image-rendering:pixelated;max-width:100%">'

    def cells(tag: str, row: Sequence[Any]) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row) + "</tr>"

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        f"<p>{html.escape(report.protocol)}</p>",
    ]
    for table in report.tables:
        body = cells("th", table.header) + "".join(cells("td", row) for row in table.rows)
        parts += [f"<h2>{html.escape(table.title)}</h2>", f"<table>{body}</table>"]
    figures = [
        f"<figure>{img(f.path)}<figcaption>{html.escape(f.caption)}</figcaption></figure>"
        for f in report.figures
    ]
    parts += [
        "<h2>Images</h2>",
        "<div style='display:flex;gap:1em;align-items:flex-start'>",
        *figures,
        "</div>",
    ]
    if report.curves:
        parts += ["<h2>Training curves</h2>", img(report.curves)]
    parts += [f"<p>{html.escape(note)}</p>" for note in report.notes]
    parts += ["<h2>Resolved config</h2>", f"<pre>{html.escape(report.config_yaml)}</pre>", "</body></html>"]
    return "\n".join(parts)


def write_report(
    out_dir: Path,
    *,
    config: Any,
    class_names: Sequence[str],
    teacher_eval: dict,
    student_eval: dict,
    test_data: str,
    synth_summary: dict,
    timings: dict[str, float],
    grid: np.ndarray,
    metrics_csv: Path,
    test_grid: np.ndarray | None = None,
    notes: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (images inline) into ``out_dir``; return both paths.

    ``test_data`` names the labelled data both evaluations used (a world's split or a folder's path).
    ``grid``: the synthetic images, one row per class (``image_grid``); ``test_grid``: the same of the
    test images, shown beside it for the reader (a world's PRIVATE split: never an input of the method).
    Both files render one ``Report``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    grid_png = out_dir / "synthetic_grid.png"
    grid_png.write_bytes(_png_bytes(grid))
    figures = [Figure(grid_png, "Synthetic images (one row per class)")]
    if test_grid is not None:
        test_grid_png = out_dir / "test_grid.png"
        test_grid_png.write_bytes(_png_bytes(test_grid))
        caption = f"Test images, {test_data} (one row per class; for the reader only; never an input)"
        figures.append(Figure(test_grid_png, caption))
    per_class = zip(class_names, teacher_eval["per_class"], student_eval["per_class"], strict=True)
    tables = (
        Table(
            "Accuracy",
            ("model", f"top-1 on {test_data}"),
            (
                ("teacher", f"{teacher_eval['top1']:.4f}"),
                ("student (final epoch)", f"{student_eval['top1']:.4f}"),
            ),
        ),
        Table(
            "Per-class accuracy",
            ("class", "teacher", "student"),
            tuple((name, f"{t:.3f}", f"{s:.3f}") for name, t, s in per_class),
        ),  # fmt: skip
        Table("Synthetic data", ("quantity", "value"), tuple((k, v) for k, v in synth_summary.items())),
        Table("Timings", ("stage", "seconds"), tuple((k, f"{v:.1f}") for k, v in timings.items())),
    )
    report = Report(
        title="diffdfkd run report",
        protocol=(
            "Honest protocol: synthesis and distillation never read the private data. Model selection may "
            "use only a held-out slice of the synthetic set; the test data ("
            f"{test_data}) is used once, here, and the student reported is the final epoch's."
        ),
        tables=tables,
        figures=tuple(figures),
        curves=plot_curves(metrics_csv, out_dir / "training_curves.png"),
        notes=tuple(notes),
        config_yaml=yaml.safe_dump(to_dict(config), sort_keys=False),
    )
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text(render_markdown(report))
    html_path.write_text(render_html(report))
    return md_path, html_path
