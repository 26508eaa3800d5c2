"""`make demo`: the whole pipeline on a synthetic data set, on the CPU, left in ./demo/.

Each stage is the same CLI command a user runs, so the demo shows exactly how to use the tool.
Stages are resumable, so a second `make demo` reuses what the first one finished.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

DEMO_VIDEOS = 12
FRAME_SIZE = (128, 176)  # small frames keep the CPU demo within minutes


def run(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "cli.main", *args]
    print(f"\n$ losh {shlex.join(args)}", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    print(f"  ({time.time() - start:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo"))
    args = parser.parse_args(argv)
    out: Path = args.out
    raw, prep = out / "raw", out / "prep"
    h, w = FRAME_SIZE
    try:
        if not (raw / "Release" / "videoset.csv").exists():
            run(["synth", str(raw), "--videos", str(DEMO_VIDEOS), "--seed", "0", "--height", str(h), "--width", str(w)])
        run(["prepare-data", "--dataset", "a2d", "--root", str(raw), "--out", str(prep),
             "--short-side", str(h), "--max-long-side", str(w)])
    except subprocess.CalledProcessError as e:
        print(f"demo stopped: `{shlex.join(e.cmd[2:])}` exited with {e.returncode}", file=sys.stderr)
        return e.returncode
    manifest = json.loads((prep / "manifest.json").read_text())
    c = manifest["counts"]
    print(f"\nDemo data set in {out}/: {c['samples']} samples ({c['samples_train']} train, {c['samples_test']} test), "
          f"{c['merged_short_masks']} merged short masks, short text by {manifest['short_text']['tagger']}"
          f"/{manifest['short_text']['rule']}, {c['broken']} problems reported in {prep / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
