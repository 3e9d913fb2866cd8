"""The run report: Markdown plus a self-contained HTML page (images inline)."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
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


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


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
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    grid_png = out_dir / "synthetic_grid.png"
    grid_png.write_bytes(_png_bytes(grid))
    grids = [(grid_png, "Synthetic images (one row per class)")]
    if test_grid is not None:
        test_grid_png = out_dir / "test_grid.png"
        test_grid_png.write_bytes(_png_bytes(test_grid))
        grids.append(
            (
                test_grid_png,
                f"Test images, {test_data} (one row per class; for the reader only; never an input)",
            )
        )
    curves_png = plot_curves(metrics_csv, out_dir / "training_curves.png")

    accuracy = _table(
        ["model", f"top-1 on {test_data}"],
        [
            ["teacher", f"{teacher_eval['top1']:.4f}"],
            ["student (final epoch)", f"{student_eval['top1']:.4f}"],
        ],
    )
    per_class = _table(
        ["class", "teacher", "student"],
        [
            [name, f"{t:.3f}", f"{s:.3f}"]
            for name, t, s in zip(
                class_names, teacher_eval["per_class"], student_eval["per_class"], strict=True
            )
        ],
    )
    synth = _table(["quantity", "value"], [[k, v] for k, v in synth_summary.items()])
    times = _table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()])
    config_yaml = yaml.safe_dump(to_dict(config), sort_keys=False)
    sections = [
        ("Accuracy", accuracy),
        ("Per-class accuracy", per_class),
        ("Synthetic data", synth),
        ("Timings", times),
    ]
    protocol = (
        "Honest protocol: synthesis and distillation never read the private data. Model selection may use "
        "only a held-out slice of the synthetic set; the test data ("
        f"{test_data}) is used once, here, and the student reported is the final epoch's."
    )

    md = ["# diffdfkd run report", "", protocol, ""]
    for title, body in sections:
        md += [f"## {title}", "", body, ""]
    for png, title in grids:
        md += [f"## {title}", "", f"![{png.stem}]({png.name})", ""]
    if curves_png:
        md += ["## Training curves", "", f"![curves]({curves_png.name})", ""]
    md += [f"- {note}" for note in notes] + ([""] if notes else [])
    md += ["## Resolved config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md))

    def img(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img src="data:image/png;base64,{data}" style="image-rendering:pixelated;max-width:100%">'

    def md_table_to_html(body: str) -> str:
        rows = [line.strip("|").split("|") for line in body.splitlines() if not line.startswith("|---")]
        head, *rest = rows
        out = "<tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"
        out += "".join(
            "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in rest
        )
        return f"<table>{out}</table>"

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>diffdfkd report</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>",
        "<h1>diffdfkd run report</h1>",
        f"<p>{html.escape(protocol)}</p>",
    ]
    for title, body in sections:
        parts += [f"<h2>{title}</h2>", md_table_to_html(body)]
    figures = [
        f"<figure>{img(png)}<figcaption>{html.escape(title)}</figcaption></figure>" for png, title in grids
    ]
    parts += [
        "<h2>Images</h2>",
        "<div style='display:flex;gap:1em;align-items:flex-start'>",
        *figures,
        "</div>",
    ]
    if curves_png:
        parts += ["<h2>Training curves</h2>", img(curves_png)]
    parts += [f"<p>{html.escape(note)}</p>" for note in notes]
    parts += ["<h2>Resolved config</h2>", f"<pre>{html.escape(config_yaml)}</pre>", "</body></html>"]
    html_path = out_dir / "report.html"
    html_path.write_text("\n".join(parts))
    return md_path, html_path
