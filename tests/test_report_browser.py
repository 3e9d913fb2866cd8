"""The HTML report in a real browser: headless Chromium loads it and every image decodes.

Skipped, saying why, where no Chromium is installed (``.ci/run`` installs Debian's ``chromium`` when it
can: ``apt-get install chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from diffdfkd.config import replace
from diffdfkd.pipeline import run_experiment

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)

# Runs after the page's load event: counts the images and those that did not decode.
PROBE = (
    "<script>window.addEventListener('load', () => {"
    "const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0));"
    "document.body.dataset.images = document.images.length;"
    "document.body.dataset.broken = broken.length;});</script>"
)


def _rendered_dom(html_path) -> str:
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            html_path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here: apt-get install chromium to run this test")
def test_every_image_of_the_report_loads_in_chromium(make_config, tmp_path, eval_folder) -> None:
    config = replace(
        make_config(tmp_path / "run" / "synth"),
        **{
            "out_dir": str(tmp_path / "run"),
            "eval_folder": str(eval_folder),
            "distill.epochs": 2,
            "distill.batch_size": 4,
            "distill.holdout_fraction": 0.2,
        },
    )
    run_experiment(config, progress=False)
    report = (tmp_path / "run" / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(report.replace("</body>", PROBE + "</body>"))

    dom = _rendered_dom(probed)
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken="(\d+)"', dom)
    assert images and broken, "the probe did not run: the page never finished loading"
    assert int(images.group(1)) == report.count("<img"), "Chromium saw another number of images"
    assert int(images.group(1)) >= 2  # the synthetic grid and the training curves at least
    assert int(broken.group(1)) == 0, f"{broken.group(1)} image(s) did not load"
