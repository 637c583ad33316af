"""medclass.report: figures, the self-contained HTML page, and how a real browser renders it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclass.evaluate import EvaluationConfig, evaluate_predictions, to_dict
from medclass.report import evaluation_figures, render_html, roc_figure, to_png, write_evaluation
from medclass.report.html import esc, num

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROC_BLUE = np.array([0x1F, 0x77, 0xB4])
HOSTILE = "<img src=x onerror=alert(1)>&\"'"


def _rows(n, split, seed, classes=("NORMAL", "PNEUMONIA")):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y = int(rng.random() < 0.5)
        p = float(1 / (1 + np.exp(-(rng.normal() + 1.5 * y))))
        out.append({"image_id": f"{split}{i}", "patient_id": f"{split}p{i // 3}", "split": split,
                    "label": classes[y], f"prob:{classes[0]}": 1 - p, f"prob:{classes[1]}": p,
                    "site": HOSTILE if i % 2 else "north"})  # fmt: skip
    return out


@pytest.fixture(scope="module")
def metrics():
    classes = ("NORMAL", HOSTILE)  # a class name that would break an unescaped page
    res = evaluate_predictions(_rows(200, "val", 1, classes), _rows(300, "test", 2, classes),
                               config=EvaluationConfig(n_bootstrap=200, by=("site",)))  # fmt: skip
    return to_dict(res)


def test_html_escapes_every_data_string_and_is_self_contained(metrics):
    facts = {"checkpoint": "runs/<script>alert('x')</script>", HOSTILE: "value"}
    page = render_html(metrics, evaluation_figures(metrics), facts)
    assert "<script" not in page.lower() and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;&quot;&#x27;" in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert not re.search(r"(src|href)\s*=\s*['\"](?!data:)", page), "every resource must be embedded"
    assert "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") == len(evaluation_figures(metrics)) == 8
    assert (
        "chosen on the <b>validation</b> split" in page.replace("\n", " ") or "validation</b> split" in page
    )


def test_numbers_and_missing_values():
    assert num(None) == "n/a" and num(float("nan")) == "n/a" and num(0.12345) == "0.123" and num(7) == "7"
    assert esc("<a>") == "&lt;a&gt;"


def test_figures_are_pngs(metrics):
    png = to_png(roc_figure(metrics["levels"]["image"]["classes"]))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_write_evaluation_files(metrics, tmp_path):
    rows = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_auc": 0.7 + e / 100} for e in range(1, 6)
    ]
    paths = write_evaluation(metrics, tmp_path, facts={"model": "inception_v3"}, training_rows=rows)
    assert json.loads(paths["metrics"].read_text()) == metrics
    assert {p.name for p in tmp_path.iterdir()} >= {
        "metrics.json",
        "report.html",
        "roc_image.png",
        "training_curves.png",
    }
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes left no temporary files
    with pytest.raises(ValueError):
        write_evaluation({"levels": {}, "x": float("nan")}, tmp_path / "bad")


# --- headless Chromium -------------------------------------------------------------------------------------
def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        reason = "chromium not found (apt-get install chromium, or scripts/system-deps.sh)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return exe


def _render(page: Path, shot: Path, profile: Path) -> str:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
           "--window-size=1200,2000", page.resolve().as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def _blue_pixels(png: Path) -> int:
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(img - ROC_BLUE).sum(axis=2) < 40).sum())


@pytest.mark.slow
def test_report_renders_in_headless_chromium(metrics, tmp_path):
    # control: a page with a script error and no figure must be caught by the same checks
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<html><body><p>x</p><script>console.error('boom'); notAFunction();</script></body></html>"
    )
    bad_err = _render(bad, tmp_path / "bad.png", tmp_path / "profile-bad")
    assert _console_errors(bad_err), "the console-error check would not notice a broken page"
    assert _blue_pixels(tmp_path / "bad.png") == 0

    paths = write_evaluation(metrics, tmp_path / "out", facts={"checkpoint": "runs/r1/best"})
    shot = tmp_path / "report.png"
    stderr = _render(paths["report"], shot, tmp_path / "profile")
    assert _console_errors(stderr) == []
    assert shot.stat().st_size > 50_000
    img = Image.open(shot)
    assert img.size == (1200, 2000)
    # the ROC figure (its blue curve and legend) is on screen
    assert _blue_pixels(shot) > 500


def test_every_html_page_uses_the_one_stylesheet() -> None:
    """evaluate's report, explain's reports and index, and the demo index all embed report.html.CSS."""
    import medclass
    from medclass.report.html import CSS

    root = Path(medclass.__file__).parent
    styles = {
        str(p.relative_to(root)): re.findall(r"<style>(.*?)</style>", p.read_text(encoding="utf-8"))
        for p in root.rglob("*.py")
    }
    found = {k: v for k, v in styles.items() if v}
    assert set(found) == {"report/html.py", "report/clinician.py", "demo/index.py"}
    assert all(s == "{CSS}" for v in found.values() for s in v), found
    assert "table.num" in CSS and ".alert" in CSS and ".imgs" in CSS


def test_patient_note_is_a_whole_sentence_and_the_positive_class_is_shown(metrics):
    page = render_html(metrics, {}, {})
    assert metrics["positive_class"] == HOSTILE
    assert f"<b>positive class: {esc(HOSTILE)}</b>" in page
    assert (
        "one score per patient: the mean of its images' probabilities; a patient counts as a true positive "
        "case when any of its images is labelled positive" in page
    )
