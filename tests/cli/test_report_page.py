"""``overparam-lit report``: the page of a tiny real study, read as HTML and in a real browser
(headless Chromium driven by Playwright), and bad input refused before anything is written.

The browser test needs Debian's ``chromium`` (``.ci/browser-up`` installs it) and the Python
package ``playwright`` (the ``dev`` extra); it uses the system browser, never a downloaded one.
Without them it is skipped with the reason, except under CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from overparam_lit.cli import main as cli_main
from overparam_lit.studies.runs import SweepFolder
from overparam_lit.studies.sweep import main as sweep_main

CHROMIUM = os.environ.get("OVERPARAM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAPTOP, PHONE = {"width": 1280, "height": 800}, {"width": 390, "height": 844}
WIDTHS, SEEDS = [2, 4, 8], [0, 1]

TINY = {
    "seed_everything": 0,
    "model": {"class_path": "overparam_lit.models.MLP", "init_args": {
        "width": 4, "depth": 2,
        "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}}},
    "data": {"class_path": "overparam_lit.data.MNIST1D", "init_args": {
        "num_samples": 200, "batch_size": 80, "label_noise": 0.15, "noise_model": "uniform", "val_size": 0}},
    "trainer": {"max_epochs": 2, "num_sanity_val_steps": 0, "enable_checkpointing": False,
                "enable_progress_bar": False, "enable_model_summary": False, "logger": False},
    "sweep": {"name": "tiny-dd", "figure": "double-descent", "pack": "all",
              "grid": {"model.init_args.width": WIDTHS, "seed_everything": SEEDS}},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished tiny double-descent sweep (3 widths x 2 seeds, 2 epochs on 160 examples, one
    member fit) and its report: ``(sweep folder, report.html)``."""
    root = tmp_path_factory.mktemp("report")
    cfg = root / "tiny_dd.yaml"
    cfg.write_text(yaml.safe_dump(TINY, sort_keys=False))
    out = root / "dd"
    assert sweep_main(["-c", str(cfg), "--out", str(out)]) == 0
    assert cli_main(["report", str(out)]) == 0
    return out, SweepFolder(out).report


def mean_by_width(sweep: Path) -> dict[int, dict[str, float]]:
    """Per width, the mean over seeds of the errors and the parameter count, straight from results.csv."""
    with open(sweep / "results.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["status"] == "done"]
    out: dict[int, dict[str, float]] = {}
    for w in sorted({int(float(r["width"])) for r in rows}):
        mine = [r for r in rows if int(float(r["width"])) == w]

        def mean(key: str, mine: list[dict[str, str]] = mine) -> float:
            return sum(float(r[key]) for r in mine) / len(mine)

        out[w] = {"seeds": len(mine), "num_params": mean("num_params"), "train": 1 - mean("train/acc"),
                  "test": 1 - mean("test/acc"), "noisy": 1 - mean("test/acc_noisy")}
    return out


def shown(text: str) -> float:
    """A number as the page shows it (``54.4%``, ``1,098``, ``0.58``) as a float."""
    text = text.strip().replace(",", "")
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


def close_to_shown(text: str, value: float) -> bool:
    """``text`` is ``value`` rounded to 3 significant digits (or exactly, for 0 and counts)."""
    got = shown(text)
    if value == 0:
        return got == 0
    unit = 10.0 ** (math.floor(math.log10(abs(value))) - 2)
    return abs(got - value) <= 0.5 * unit * (1 + 1e-9) or abs(got - round(value)) == 0 and abs(value) >= 100


def check_key_table(sweep: Path, rows: list[list[str]]) -> None:
    """The key results table (header first) holds results.csv's per-width means."""
    header, body = rows[0], rows[1:]
    assert header == ["Width", "Parameters", "Seeds", "Train error", "Test error (clean)",
                      "Test error (noisy)"]
    expected = mean_by_width(sweep)
    assert [int(shown(r[0])) for r in body] == list(expected) == WIDTHS
    for r in body:
        e = expected[int(shown(r[0]))]
        assert shown(r[1]) == round(e["num_params"]) and int(r[2]) == e["seeds"] == len(SEEDS)
        for text, key in zip(r[3:], ("train", "test", "noisy"), strict=True):
            assert close_to_shown(text, e[key]), (r, key, e[key])


class _Tables(HTMLParser):
    """Cell texts of every table by id, the page's resource references and the open <details>."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.refs: list[str] = []
        self.stack: list[str] = []
        self.current: str | None = None
        self.cell: list[str] | None = None
        self.in_details = 0
        self.tables_in_details = 0
        self.viewport = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("img", "script", "link", "iframe", "source", "video", "audio"):
            self.refs += [v for k, v in a.items() if k in ("src", "href") and v]
        if tag == "meta" and a.get("name") == "viewport":
            self.viewport = "width=device-width" in (a.get("content") or "")
        if tag == "details":
            self.in_details += 1
        if tag == "table":
            self.current = a.get("id") or f"table{len(self.tables)}"
            self.tables[self.current] = []
            self.tables_in_details += bool(self.in_details)
        elif tag == "tr" and self.current:
            self.tables[self.current].append([])
        elif tag in ("td", "th") and self.current:
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "details":
            self.in_details -= 1
        elif tag == "table":
            self.current = None
        elif tag in ("td", "th") and self.cell is not None and self.current:
            self.tables[self.current][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def test_report_page_says_the_setup_and_holds_the_numbers(study: tuple[Path, Path]) -> None:
    sweep, page_path = study
    page = page_path.read_text()
    parsed = _Tables()
    parsed.feed(page)
    title = re.search(r"<h1>(.*?)</h1>", page).group(1)
    assert title == "Double descent in width: MLP (depth 2) on MNIST1D, 15% label noise"
    setup = re.sub(r"<[^>]+>", "", re.search(r"<p id='setup-text'>(.*?)</p>", page).group(1))
    for phrase in ("MLP (2 hidden layers, relu)", "MNIST-1D (160 training and 40 test examples)",
                   "15% of the training labels replaced by a random label", "batch size 80",
                   "Widths 2, 4, 8 (3 widths", "seeds 0, 1", "Adam (lr 0.01) for 2 epochs",
                   "6 members in 1 fit (seeds and widths trained together"):
        assert phrase in setup, (phrase, setup)
    assert f"overparam-lit sweep -c {sweep.parent / 'tiny_dd.yaml'} --out {sweep}" in page
    assert f"overparam-lit report {sweep}" in page and f"overparam-lit plot double-descent {sweep}" in page
    check_key_table(sweep, parsed.tables["key-results"])
    # the figure's caption states its numbers: the same as figures/double_descent.json's
    numbers = json.loads(SweepFolder(sweep).figure("double_descent", ".json").read_text())
    cap = re.sub(r"<[^>]+>", "", re.search(r"<figcaption>(.*?)</figcaption>", page).group(1))
    last = f"{100 * numbers['last_width_test_error']:.3g}%"
    assert f"(width {int(numbers['last_width'])}) the clean test error is {last}" in cap, cap
    assert f"{100 * numbers['peak_test_error']:.3g}%" in cap and "Mean of 2 seeds per width" in cap
    # member detail folded away: the fits, the member rows and every figure's raw numbers
    assert page.count("<details") == 3 and "Results (one row per member), 6 rows" in page
    assert "e+0" not in page and "e-0" not in page  # no 1.422e+04
    # self-contained and made for small screens
    assert parsed.viewport and parsed.refs
    assert all(r.startswith("data:image/png;base64,") for r in parsed.refs)
    assert not re.search(r"(?:src|href)\s*=\s*['\"]?(?:https?:)?//", page) and "@import" not in page
    assert "max-width:100%" in page and "@media" in page


def _fail_or_skip(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}. CI is set, so the browser test must run: .ci/browser-up installs Chromium "
                    "and `pip install -e .[dev]` installs playwright.", pytrace=False)
    pytest.skip(f"{reason}; run .ci/browser-up (as root) and `pip install -e .[dev]` to run it")


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright (never a downloaded browser)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _fail_or_skip("the Python package playwright is not installed")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _fail_or_skip(f"Chromium not found at {CHROMIUM}")
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        except Exception as err:  # noqa: BLE001 - any start failure is reported as the reason
            _fail_or_skip(f"Chromium ({CHROMIUM}) did not start: {str(err).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.mark.browser
def test_report_page_in_a_real_browser(browser, study: tuple[Path, Path], tmp_path: Path) -> None:
    sweep, page_path = study
    for name, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
        page = browser.new_page(viewport=viewport)
        errors: list[str] = []
        page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        foreign: list[str] = []
        page.on("request", lambda r, foreign=foreign: foreign.append(r.url)
                if not r.url.startswith(("file://", "data:")) else None)
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        images = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        assert images and all(done and w > 0 and h > 0 for done, w, h in images), images
        assert errors == [] and foreign == [], (errors, foreign)
        rows = page.evaluate("[...document.querySelectorAll('#key-results tr')]"
                             ".map(tr => [...tr.cells].map(c => c.innerText))")
        check_key_table(sweep, rows)
        assert page.title() == "Double descent in width: MLP (depth 2) on MNIST1D, 15% label noise"
        # member rows are folded away: closed <details>, nothing of them on screen
        assert page.evaluate("document.querySelector('#member-rows').open") is False
        assert page.locator("#member-rows table").is_visible() is False
        # no horizontal scrolling of the page; the pictures fit the screen
        overflow = page.evaluate("[document.scrollingElement.scrollWidth, innerWidth, Math.max("
                                 "...[...document.images].map(i => i.getBoundingClientRect().right))]")
        assert overflow[0] <= overflow[1] + 1 and overflow[2] <= overflow[1] + 1, (name, overflow)
        shot = Path(os.environ.get("OVERPARAM_REPORT_SHOTS", tmp_path)) / f"report_{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        page.close()


# ---- bad input: one paragraph, exit 2, nothing written -----------------------------------
def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))} if root.exists() else {}


def _copy(sweep: Path, dest: Path) -> Path:
    shutil.copytree(sweep, dest, ignore=shutil.ignore_patterns("report.html", "figures"))
    return dest


def _one_width_run(sweep: Path, dest: Path) -> Path:
    """The sweep's member fit folder with only width 2 left: a run folder no report figure applies to."""
    (fit,) = (SweepFolder(sweep).points).iterdir()
    shutil.copytree(fit, dest)
    members = dest / "members.csv"
    with open(members, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(members, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if float(r["width"]) == 2)
    return dest


def _bad(case: str, sweep: Path, tmp: Path) -> tuple[list[str], Path, str]:
    """``(report arguments, folder that must stay unchanged, message)`` of a bad-input case."""
    if case == "empty folder":
        (tmp / "empty").mkdir()
        return [str(tmp / "empty")], tmp / "empty", "holds no sweep (no sweep.json or results.csv)"
    if case == "one run folder":
        run = _one_width_run(sweep, tmp / "run")
        return [str(run)], run, "is the run folder of one `overparam-lit fit`, not a sweep folder"
    if case == "results.csv of random bytes":
        bad = _copy(sweep, tmp / "bytes")
        bad.joinpath("results.csv").write_bytes(bytes(range(256)) * 8)
        return [str(bad)], bad, "results.csv is not text"
    if case == "results.csv of another table":
        bad = _copy(sweep, tmp / "other")
        bad.joinpath("results.csv").write_text("a,b\n1,2\n")
        return [str(bad)], bad, "results.csv lacks the column(s) ['fit', 'status']"
    if case == "broken sweep.json":
        bad = _copy(sweep, tmp / "json")
        spec = bad / "sweep.json"
        spec.write_text(spec.read_text()[:-40])
        return [str(bad)], bad, "sweep.json is not valid JSON"
    if case == "sweep without results":
        bad = _copy(sweep, tmp / "planned")
        bad.joinpath("results.csv").unlink()
        return [str(bad)], bad, "the sweep has no results.csv yet"
    if case == "--out in a missing folder":
        good = _copy(sweep, tmp / "good")
        return [str(good), "--out", "/proc/nope/r.html"], good, "the folder of --out does not exist"
    if case == "--out is a folder":
        good = _copy(sweep, tmp / "good")
        return [str(good), "--out", str(good / "points")], good, "--out is a folder, not a file"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["empty folder", "one run folder", "results.csv of random bytes",
                                  "results.csv of another table", "broken sweep.json",
                                  "sweep without results", "--out in a missing folder", "--out is a folder"])
def test_bad_input_is_refused_before_anything_is_written(study: tuple[Path, Path], tmp_path: Path, case: str,
                                                         capsys) -> None:
    argv, folder, message = _bad(case, study[0], tmp_path)
    before = _tree(folder)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli_main(["report", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("overparam-lit report: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err  # one paragraph
    assert _tree(folder) == before and not (folder / "report.html").exists()


def test_cli_report_is_a_subprocess_with_exit_code_2(tmp_path: Path) -> None:
    """The console script itself: the message, exit 2, no traceback."""
    import subprocess

    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "overparam_lit", "report", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("overparam-lit report: error: the folder holds no sweep")
    assert list((tmp_path / "empty").iterdir()) == []
