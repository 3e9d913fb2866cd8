"""The run report: one data structure rendered as Markdown and as HTML (the HTML does not re-parse the
Markdown, so a cell holding a '|' or '<' stays one cell, escaped)."""

import re

import numpy as np

from diffdfkd.config import ExperimentConfig
from diffdfkd.report import write_report


def test_markdown_and_html_render_the_same_tables(tmp_path):
    md_path, html_path = write_report(
        tmp_path,
        config=ExperimentConfig(),
        class_names=("zero", "one"),
        teacher_eval={"top1": 0.9, "per_class": [1.0, 0.8]},
        student_eval={"top1": 0.75, "per_class": [0.5, 1.0]},
        test_data="digits private:test",
        synth_summary={"images": 8, "prompt": "a | b <c>"},
        timings={"synthesis": 1.25},
        grid=np.zeros((4, 4, 3), dtype=np.uint8),
        metrics_csv=tmp_path / "missing.csv",
        notes=("a note",),
    )
    md, page = md_path.read_text(), html_path.read_text()
    assert "| student (final epoch) | 0.7500 |" in md and "| one | 0.800 | 1.000 |" in md
    assert "<td>student (final epoch)</td><td>0.7500</td>" in page
    assert "<tr><td>prompt</td><td>a | b &lt;c&gt;</td></tr>" in page  # one cell, escaped
    assert len(re.findall("<h2>", page)) == 4 + 2  # four tables, the images, the config
    assert "- a note" in md and "<p>a note</p>" in page and "Training curves" not in md
