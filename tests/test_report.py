"""Reading a result: the HTML report of an evaluation (parsed, its pictures counted and decoded, made again from the
saved folder, rendered in headless Chromium), the paper's numbers beside the right models only, J&F per video of a
whole-video set, and `losh predict`'s predict.html."""
import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from losh.cli.main import app
from losh.evaluation.report import build_report
from losh.models.registry import build_model
from losh.schemas.presets import get_config
from losh.training.checkpoint import CHECKPOINT_SCHEMA, CHECKPOINT_VERSION

runner = CliRunner()


class Page(HTMLParser):
    """The parts of a page the tests look at: pictures, links, tables' rows."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.addresses: list[str] = []
        self.headings: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._heading = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        self.addresses += [v for k, v in attrs.items() if k in ("src", "href") and v]
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []
        self._heading = tag == "h2"

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "h2":
            self._heading = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._heading:
            self.headings.append(data)


def decoded(image: dict) -> bytes:
    kind, _, data = image["src"].partition(";base64,")
    assert kind in ("data:image/png", "data:image/jpeg"), kind[:40]
    raw = base64.b64decode(data)
    assert raw[:4] == b"\x89PNG" if kind.endswith("png") else raw[:2] == b"\xff\xd8"
    return raw


def tiny_checkpoint(path: Path, spec: str = "tiny:wo-fbc") -> Path:
    config = get_config(spec)
    torch.manual_seed(0)
    torch.save({"schema": CHECKPOINT_SCHEMA, "version": CHECKPOINT_VERSION, "model_config": config.to_dict(),
                "model": build_model(config).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def evaluation(prepared, tmp_path_factory):
    """`losh evaluate --out EVAL` of an untrained tiny model on the 12 test samples of `prepared`."""
    root = tmp_path_factory.mktemp("report")
    folder = root / "eval"
    result = runner.invoke(app, ["evaluate", "--data", str(prepared), "--checkpoint",
                                 str(tiny_checkpoint(root / "tiny.pt")), "--workers", "0", "--out", str(folder),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"report: {folder / 'report.html'}" in result.output
    return folder


def test_the_report_holds_every_picture_itself_and_lists_every_sample_by_iou(evaluation):
    samples = [json.loads(line) for line in (evaluation / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12
    assert {"sample_id", "video_id", "frame", "long", "short", "iou", "score", "thumbnail"} <= set(samples[0])
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert sum(s["iou"] for s in samples) / 12 == pytest.approx(metrics["mean_iou"])
    page = Page((evaluation / "report.html").read_text())
    # 2 plots (precision@k, IoU histogram) + 12 thumbnails + the 6 worst and 6 best as larger overlays
    assert len(page.images) == 2 + 12 + 12
    sizes = [len(decoded(image)) for image in page.images]
    assert all(size > 500 for size in sizes)
    assert all(a.startswith("data:") for a in page.addresses)                      # nothing fetched at view time
    assert "http" not in re.sub(r'src="data:[^"]*"', "", (evaluation / "report.html").read_text())
    assert ["Metrics (%)", "Plots", "Worst 6", "Best 6", "Every expression by IoU (12)"] == page.headings
    metric_rows = {row[0]: row[1:] for row in page.rows if row and row[0] in ("mean IoU", "overall IoU", "mAP")}
    assert metric_rows["mean IoU"] == [f"{100 * metrics['mean_iou']:.1f}"]          # no paper column for tiny
    listed = [row for row in page.rows if len(row) == 7 and row[0].isdigit()]
    assert [row[2] for row in listed] == [s["long"] for s in sorted(samples, key=lambda s: (s["iou"], s["sample_id"]))]
    assert len(list((evaluation / "thumbnails").glob("*.jpg"))) == 12
    assert len(list((evaluation / "overlays").glob("*.jpg"))) == 12


def test_losh_report_makes_the_same_page_from_the_saved_folder(evaluation, tmp_path):
    again = tmp_path / "again.html"
    result = runner.invoke(app, ["report", str(evaluation), "--out", str(again)])
    assert result.exit_code == 0, result.output
    assert again.read_text() == (evaluation / "report.html").read_text()
    refused = runner.invoke(app, ["report", str(evaluation)])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    empty = tmp_path / "not-an-evaluation"
    empty.mkdir()
    missing = runner.invoke(app, ["report", str(empty), "--out", str(tmp_path / "x.html")])
    assert missing.exit_code == 1 and "metrics.json" in missing.output


@pytest.mark.parametrize("model, dataset, backbone, expected", [
    ("losh-m", "a2d", "swin-t", ["72.9", "64.9", "47.8"]),
    ("mttr", "a2d", "swin-t", ["70.2", "61.8", "44.7"]),
    ("losh-s", "a2d", "swin-t", ["79.3", "71.6", "57.6"]),
    ("sgmg", "a2d", None, ["78.0", "70.4", "56.1"]),
    ("losh-m:wo-fbc", "a2d", "swin-t", None),       # an ablation: not the paper's model
    ("losh-s", "a2d", "swin-b", None),
    ("losh-m", "jhmdb", "swin-t", None),
])
def test_the_papers_numbers_stand_beside_its_own_models_only(evaluation, model, dataset, backbone, expected):
    metrics = {**json.loads((evaluation / "metrics.json").read_text()), "model": model, "dataset": dataset,
               "backbone": backbone}
    rows = {row[0]: row for row in Page(build_report(metrics, evaluation)).rows if row}
    if expected is None:
        assert rows["metric"] == ["metric", "this evaluation"]
        return
    assert rows["metric"] == ["metric", "this evaluation", "paper", "difference"]
    assert [rows[name][2] for name in ("overall IoU", "mean IoU", "mAP")] == expected
    assert rows["mean IoU"][3] == f"{100 * metrics['mean_iou'] - float(expected[1]):+.1f}"


def test_without_matplotlib_the_report_is_made_without_its_plots(evaluation, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    page = Page(build_report(json.loads((evaluation / "metrics.json").read_text()), evaluation))
    assert len(page.images) == 12 + 12 and "Plots" in page.headings


def chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))),
                None)


def test_the_report_renders_in_a_browser_with_every_image_decoded(evaluation, tmp_path):
    """Headless Chromium: a screenshot of the page, and its DOM after loading, where a check added to a copy of the
    page counts the pictures the browser could not decode."""
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (.ci/run installs it: apt-get install chromium)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0", "--allow-file-access-from-files"]
    shot = tmp_path / "report.png"
    taken = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000",
                            (evaluation / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.read_bytes()[:4] == b"\x89PNG", taken.stderr[-2000:]
    assert "CONSOLE" not in taken.stderr, taken.stderr[-2000:]
    checked = tmp_path / "checked.html"
    check = ("<script>addEventListener('load', () => { const images = [...document.images]; "
             "document.body.setAttribute('data-broken', images.filter(i => !i.complete || !i.naturalWidth).length); "
             "document.body.setAttribute('data-images', images.length); });</script>")
    checked.write_text((evaluation / "report.html").read_text().replace("</body>", check + "</body>"))
    dom = subprocess.run([*flags, "--dump-dom", "--virtual-time-budget=10000", checked.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert 'data-images="26"' in dom.stdout and 'data-broken="0"' in dom.stdout, dom.stdout[:300]
    assert "CONSOLE" not in dom.stderr, dom.stderr[-2000:]


def test_a_whole_video_set_is_reported_with_j_f_and_j_and_f_per_video(tmp_path):
    from losh.pipeline.prepare import PrepareSettings, prepare_dataset
    from losh.pipeline.synth_layouts import write_synthetic_refer_davis

    raw, prep = tmp_path / "davis", tmp_path / "davis_prep"
    write_synthetic_refer_davis(raw, videos=2, seed=1, height=48, width=64, frames=6, progress=False)
    prepare_dataset("refer-davis", raw, prep, short_source="machine", workers=1, progress=False,
                    settings=PrepareSettings(window=8, short_side=48, max_long_side=64, decoder="opencv"))
    folder = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--data", str(prep), "--checkpoint",
                                 str(tiny_checkpoint(tmp_path / "tiny.pt")), "--workers", "0", "--out", str(folder),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert len(samples) == metrics["per_expression"]["expressions"] and all("j" in s and "f" in s for s in samples)
    page = Page((folder / "report.html").read_text())
    assert "J, F and J&F per video (%)" in page.headings
    videos = sorted({s["video_id"] for s in samples})
    per_video = {row[0]: row for row in page.rows if row and row[0] in videos}
    assert set(per_video) == set(videos)
    for video in videos:
        mine = [s for s in samples if s["video_id"] == video]
        j, f = (sum(s[k] for s in mine) / len(mine) for k in ("j", "f"))
        assert per_video[video][1:] == [str(len(mine)), f"{100 * j:.1f}", f"{100 * f:.1f}", f"{50 * (j + f):.1f}"]
    assert len(page.images) == 1 + len(samples) + len(samples)       # the J histogram, thumbnails, larger overlays
    for image in page.images:
        decoded(image)


def test_predict_writes_a_page_beside_its_overlay(tmp_path):
    from losh.pipeline.video import write_h264
    from tests.test_predict import TEXTS, moving_shapes

    video = write_h264(tmp_path / "clip.mp4", moving_shapes(12), 24)
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt", "tiny")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "--checkpoint", str(checkpoint), "--video", str(video), "--out", str(out),
                                 "--text", TEXTS[0], "--text", TEXTS[1], "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "count frames" not in result.output and "0frame" not in result.output   # an instant count: no bar
    report = json.loads((out / "predictions.json").read_text())
    assert report["page"] == "predict.html" and (out / "overlay.mp4").is_file()
    page = Page((out / "predict.html").read_text())
    assert len(page.images) == 8 * 2                     # 8 frames spread over the video, one per expression
    for image in page.images:
        decoded(image)
    rows = {row[1]: row for row in page.rows if len(row) == 6}
    assert rows[TEXTS[0]][4] == f"{report['expressions'][0]['score']:.3f}"
    frames = [int(row[0]) for row in page.rows if len(row) == 3 and row[0].isdigit()]
    assert frames == sorted(frames) and frames[0] == 0 and frames[-1] == 11
