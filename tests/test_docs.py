"""The README and docs/ as a user reads them: every shell command in their fenced blocks runs as written on
synthetic data in the real layouts (placeholder roots /data/<set> and /weights/ point into a sandbox), or, where
it needs real weights or a GPU (train, evaluate, predict, convert-checkpoint, a cluster scheduler), parses and
validates its arguments; the README's Python example runs; no text speaks of how the toolkit was built."""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from losh.cli.main import app, config_with

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.S | re.M)
RUNNABLE = ("synth", "shorten", "prepare-data", "compute-flows", "config")   # cheap on CPU: run whole
BUILD_WORDS = re.compile(r"\bstop \d|\bstop-\d|\bthis stop\b|\bissue \d|\blent to\b", re.I)
TEXT_SUFFIXES = {".py", ".md", ".txt", ".json", ".toml", ".sh", ".sbatch", ".cfg", ".yaml", ".yml"}


def shell_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command in the docs' fenced shell blocks, continuation lines joined, comments
    dropped, in document order; a command written twice (README and a docs page) once."""
    seen, found = set(), []
    for path in DOC_FILES:
        for block in SHELL_BLOCK.findall(path.read_text(encoding="utf-8")):
            for line in block.replace("\\\n", " ").splitlines():
                argv = shlex.split(line, comments=True)
                if argv and tuple(argv) not in seen:
                    seen.add(tuple(argv))
                    found.append((f"{path.relative_to(REPO)}: {line.strip()}", argv))
    return found


COMMANDS = shell_commands()


def losh_args(argv: list[str]) -> list[str] | None:
    """The arguments of the `losh` command a line runs (directly, or under torchrun as `-m losh.cli.main`)."""
    if argv[0] == "losh":
        return argv[1:]
    if argv[0] == "torchrun":
        assert "-m" in argv and argv[argv.index("-m") + 1] == "losh.cli.main", argv
        return argv[argv.index("-m") + 2:]
    return None


def in_sandbox(args: list[str], sandbox: Path) -> list[str]:
    """The placeholder roots /data/... and /weights/... as folders of the sandbox."""
    return [re.sub(r"^/(data|weights)/", lambda m: f"{sandbox}/{m.group(1)}/", a) for a in args]


def parse(args: list[str]) -> tuple[str, dict]:
    """(command name, its parameters) as click parses and converts them; a bad option or value raises."""
    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="losh")   # typer's own click (vendored in typer 0.2x)
    name, command, rest = args[0], group.get_command(ctx, args[0]), args[1:]
    assert command is not None, f"no command {name!r}"
    if hasattr(command, "list_commands"):   # a group: `losh config show ...`
        ctx = command.context_class(command, info_name=name, parent=ctx)
        name, command, rest = f"{name} {rest[0]}", command.get_command(ctx, rest[0]), rest[1:]
        assert command is not None, f"no command {name!r}"
    return name, command.make_context(name, list(rest), parent=ctx).params


def validate(name: str, params: dict) -> None:
    """What a command checks of its arguments before it needs the data or the weights."""
    if name == "train":
        config = config_with(params["config"] or "losh-m", params["set_"], params["backbone_weights"],
                             params["text_encoder"], params["window"])
        assert config.name
        if params["settings_file"] is not None:
            settings = params["settings_file"]
            assert (settings if settings.is_absolute() else REPO / settings).is_file(), settings
        if params["init_parts"]:
            assert params["init_from"] is not None
    if name == "convert-checkpoint":
        from losh.models.registry import PUBLISHED_FORMATS
        assert params["source_format"] in PUBLISHED_FORMATS, params
    if name == "evaluate":   # a model, or masks it saved
        assert (params["checkpoint"] is None) != (params["predictions"] is None) and params["out"] is not None
    if name == "predict":
        assert params["checkpoint"] is not None and params["out"] is not None and params["text"]


# ------------------------------------------------------------------------------------------------ sandbox

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """Raw data sets in the five real layouts at /data/<set> (the refer toolkit's at /data/refer), a video and a frame
    folder of one's own."""
    from losh.pipeline.synth import write_synthetic_a2d
    from losh.pipeline.synth_layouts import (
        write_synthetic_jhmdb,
        write_synthetic_refer_davis,
        write_synthetic_refer_youtube_vos,
    )
    from losh.pipeline.synth_refcoco import write_synthetic_refcoco

    root = tmp_path_factory.mktemp("docs")
    data = root / "data"
    small = {"height": 48, "width": 64, "progress": False}
    write_synthetic_a2d(data / "a2d", videos=4, frames=12, annotated_per_video=1, **small)
    write_synthetic_jhmdb(data / "jhmdb", videos=2, frames=12, **small)
    write_synthetic_refer_youtube_vos(data / "refer-youtube-vos", videos=4, frames=12, **small)
    write_synthetic_refer_davis(data / "refer-davis", videos=2, frames=6, **small)
    write_synthetic_refcoco(data / "refer", images=4, **small)
    (root / "weights").mkdir()
    video = sorted((data / "a2d" / "Release" / "clips320H").glob("*.mp4"))[0]
    for name in ("my_video.mp4", "lecture.mp4"):
        shutil.copy(video, root / name)
    frames = sorted((data / "jhmdb").rglob("*.png"))[:6]
    (root / "my_frames").mkdir()
    for i, frame in enumerate(frames):
        shutil.copy(frame, root / "my_frames" / f"{i:05d}.png")
    return root


@pytest.fixture()
def in_sandbox_cwd(sandbox, monkeypatch):
    """Relative paths (runs/, my_video.mp4, a2d_short_texts.csv) in the sandbox; the synthetic JHMDB videos
    scored by a protocol file in MTTR's format that lists them (MTTR's own lists the real videos)."""
    from losh.pipeline.datasets import jhmdb

    monkeypatch.chdir(sandbox)
    protocol = sandbox / "synthetic_jhmdb_protocol.json"
    if not protocol.exists():
        rows = []
        for video in sorted((sandbox / "data/jhmdb/Rename_Images").glob("*/*")):
            frames = sorted(video.glob("*.png"))
            query = jhmdb_query(sandbox / "data/jhmdb", video.name)
            rows += [[video.name, f"./jhmdb_sentences/Rename_Images/{video.parent.name}/{video.name}/{f.name}",
                      f"./jhmdb_sentences/puppet_mask/{video.parent.name}/{video.name}/puppet_mask.mat",
                      len(frames), query] for f in frames[1:-1:4]]
        protocol.write_text(json.dumps(rows))
    monkeypatch.setattr(jhmdb, "MTTR_PROTOCOL", protocol)
    return sandbox


def jhmdb_query(root: Path, video_id: str) -> str:
    """The expression jhmdb_annotation.txt gives a video."""
    for line in (root / "jhmdb_annotation.txt").read_text().splitlines()[1:]:
        vid, _, query = line.partition(",")
        if vid == video_id:
            return query
    raise KeyError(video_id)


def adapted(args: list[str]) -> list[str]:
    """Values that only the real data sets' sizes allow: 200 held-out videos of Refer-YouTube-VOS's 3,471."""
    return [("1" if prev == "--holdout-videos" else a) for prev, a in zip([None, *args], args)]


# ------------------------------------------------------------------------------------------------- tests

def test_the_docs_hold_commands_of_every_stage():
    names = {argv[0] for _, argv in COMMANDS} | {parse(args)[0] for _, argv in COMMANDS if (args := losh_args(argv))}
    assert {"synth", "prepare-data", "compute-flows", "train", "evaluate", "predict", "convert-checkpoint",
            "config show", "config save", "shorten", "torchrun", "make", "sbatch"} <= names


def _runnable(argv: list[str]) -> bool:
    args = losh_args(argv)
    return argv[0] == "losh" and args[0] in RUNNABLE and "--scheduler" not in args


def run_order(item: tuple[str, list[str]]) -> tuple[int, bool]:
    """Stages in the data's order (raw sets before the flows of them), a check after what it checks."""
    argv = item[1]
    return RUNNABLE.index(argv[1]), "--verify" in argv


def test_every_cheap_command_runs_as_written(in_sandbox_cwd):
    """synth, shorten, prepare-data, compute-flows and config commands, on the sandbox's synthetic sets."""
    runnable = sorted((c for c in COMMANDS if _runnable(c[1])), key=run_order)
    assert len(runnable) >= 20
    for where, argv in runnable:
        result = CliRunner().invoke(app, adapted(in_sandbox(argv[1:], in_sandbox_cwd)))
        assert result.exit_code == 0, f"{where}\n{result.output}"
    assert (in_sandbox_cwd / "data/a2d_prep/flows").is_dir() and (in_sandbox_cwd / "a2d_short_texts.csv").is_file()
    assert json.loads((in_sandbox_cwd / "runs/losh-m.json").read_text())["loss"]["fbc_reduction"] == "pixel_mean"


def test_every_other_losh_command_parses_and_validates(sandbox):
    """train, evaluate, predict, convert-checkpoint (and cluster-scheduled flows): real weights or a GPU."""
    checked = 0
    for where, argv in COMMANDS:
        args = losh_args(argv)
        if args is None or _runnable(argv):
            continue
        try:
            name, params = parse(in_sandbox(args, sandbox))
            validate(name, params)
        except Exception as e:   # click's usage errors, the config's ValueError, a failed check
            pytest.fail(f"{where}: {e}")
        checked += 1
    assert checked >= 20


def test_make_targets_and_cluster_scripts_exist():
    makefile = (REPO / "Makefile").read_text()
    for where, argv in COMMANDS:
        if argv[0] == "make":
            for target in (a for a in argv[1:] if "=" not in a):
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), where
        if argv[0] == "sbatch":
            script = REPO / next(a for a in argv[1:] if a.endswith(".sbatch"))
            assert script.is_file(), where
            for assignment in next(a for a in argv if a.startswith("--export=")).split("=", 1)[1].split(",")[1:]:
                assert f"${assignment.split('=')[0]}" in script.read_text() or \
                       f"${{{assignment.split('=')[0]}" in script.read_text(), where


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's example, after a (small) demo: demo/raw, demo/prep and demo/run/checkpoints/last.pt."""
    from losh.pipeline.synth import write_synthetic_a2d

    example = re.search(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M).group(1)
    monkeypatch.chdir(tmp_path)
    write_synthetic_a2d(Path("demo/raw"), videos=4, frames=12, height=48, width=64, annotated_per_video=1,
                        progress=False)
    import losh
    losh.prepare("a2d", "demo/raw", "demo/prep", window=5, short_side=128, max_long_side=176, progress=False)
    result = CliRunner().invoke(app, ["compute-flows", "--data", "demo/prep", "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["train", "--data", "demo/prep", "--out", "demo/run", "--config", "tiny-s",
                                      "--max-steps", "1", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert 0 <= namespace["metrics"]["mean_iou"] <= 1 and namespace["report"]["frames"] > 0
    assert (tmp_path / "demo/api-predict/predictions.json").is_file()


def test_no_text_speaks_of_how_the_toolkit_was_built():
    hits = []
    for folder in ("README.md", "docs", "cli", "losh", "pipeline", "schemas"):
        path = REPO / folder
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            if file.suffix in TEXT_SUFFIXES and file.is_file():
                for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                    if BUILD_WORDS.search(line):
                        hits.append(f"{file.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_the_build_words_check_can_fail():
    for text in ("as of stop 19", "see issue 13", "fixed in this stop", "a GPU lent to us", "stop-3"):
        assert BUILD_WORDS.search(text), text
    for text in ("frames [start, end)", "nonstop 3 times", "the issue is"):
        assert not BUILD_WORDS.search(text), text
