"""The HTML report in a real browser: headless Chromium loads it and every image decodes.

Skipped, saying why, where no Chromium is installed (``.ci/run`` installs Debian's ``chromium`` when it
can: ``apt-get install chromium``). The digits-world report's contents (its grid of PRIVATE test images,
the BN-statistics distance, the cost per image) are checked everywhere, Chromium or not.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from diffdfkd.config import replace
from diffdfkd.pipeline import run_experiment
from diffdfkd.report import image_grid
from diffdfkd.worlds import digits
from diffdfkd.worlds.looks import LOOKS

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


def _images_loaded_in_chromium(html_path, tmp_path) -> tuple[int, int]:
    """(images on the page, images that did not decode) after Chromium's load event."""
    report = html_path.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(report.replace("</body>", PROBE + "</body>"))
    dom = _rendered_dom(probed)
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken="(\d+)"', dom)
    assert images and broken, "the probe did not run: the page never finished loading"
    assert int(images.group(1)) == report.count("<img"), "Chromium saw another number of images"
    return int(images.group(1)), int(broken.group(1))


@pytest.mark.slow  # headless Chromium
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
    images, broken = _images_loaded_in_chromium(tmp_path / "run" / "report.html", tmp_path)
    assert images >= 2  # the synthetic grid and the training curves at least
    assert broken == 0, f"{broken} image(s) did not load"


@pytest.fixture(scope="module")
def digits_run(make_config, make_teacher, tmp_path_factory):
    """A run in the digits world (no eval_folder) on the tiny generator with a tiny 10-class teacher:
    its folder, and the PRIVATE splits read during the run."""
    root = tmp_path_factory.mktemp("digits_run")
    teacher_file = root / "teacher10.safetensors"
    save_file(make_teacher(class_names=digits.CLASS_NAMES).model.state_dict(), str(teacher_file))
    config = replace(
        make_config(root / "run" / "synth"),
        **{
            "world": "digits",
            "teacher.weights": str(teacher_file),
            "teacher.class_names": list(digits.CLASS_NAMES),
            "synth.images_per_class": 1,
            "out_dir": str(root / "run"),
            "distill.epochs": 1,
            "distill.batch_size": 4,
            "distill.holdout_fraction": 0.2,
        },
    )
    reads: list[str] = []
    load_private = digits.load_private
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(digits, "load_private", lambda split: reads.append(split) or load_private(split))
        run_experiment(config, progress=False)
    return root / "run", reads


def test_a_digits_world_report_shows_the_private_test_images_and_the_new_measures(digits_run) -> None:
    out, reads = digits_run
    assert reads == ["test"]  # the evaluation's one read: the grid reuses those images
    test_images, test_labels = digits.load_private("test")
    shown = np.asarray(Image.open(out / "test_grid.png"))
    assert np.array_equal(shown, image_grid(test_images, test_labels, len(digits.CLASS_NAMES)))

    results = json.loads((out / "results.json").read_text())
    assert math.isfinite(results["bn_distance_of_synthetic"]) and results["bn_distance_of_synthetic"] > 0
    assert math.isfinite(results["bn_distance_of_test_images"])
    synthesis = json.loads((out / "synth" / "summary.json").read_text())["seconds_all_processes"]
    # every process's time (here: one); the summary rounds it to 2 decimals, the run's total to 3: hence 0.01
    assert 0 < synthesis <= results["seconds"]["synthesis"] + 0.01
    assert results["synthesis_s_per_image"] == pytest.approx(
        synthesis / results["synthetic_images"], abs=1e-4
    )
    assert set(results["look_mix_of_synthetic"]) == set(LOOKS)
    assert len(results["student_eval"]["per_class"]) == len(digits.CLASS_NAMES)
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "![test_grid](test_grid.png)" in md and "![synthetic_grid](synthetic_grid.png)" in md
    cells = html.unescape(page).replace("</td><td>", " | ")
    for text in (md, cells):
        assert "for the reader only; never an input" in text and "Per-class accuracy" in text
        bn = f"BN-statistics distance to the teacher's running statistics (whole set) | {results['bn_distance_of_synthetic']:.3f}"
        assert bn in text
        assert (
            f"synthesis seconds per image (all processes' synthesis time / images) | {results['synthesis_s_per_image']:.3f}"
            in text
        )
    # every image of the page is a PNG that decodes: the synthetic grid, the test grid, the curves
    inline = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(inline) == page.count("<img") == 3
    for data in inline:
        Image.open(io.BytesIO(base64.b64decode(data))).load()


@pytest.mark.slow  # headless Chromium
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here: apt-get install chromium to run this test")
def test_every_image_of_a_digits_world_report_loads_in_chromium(digits_run, tmp_path) -> None:
    images, broken = _images_loaded_in_chromium(digits_run[0] / "report.html", tmp_path)
    assert images == 3  # the synthetic grid, the PRIVATE test grid, the training curves
    assert broken == 0, f"{broken} image(s) did not load"
