"""How to store prepared frame windows: bytes per annotated frame and decode cost per sample.

Prints one JSON line per codec (`prepare_storage_<codec>`) and the chosen default
(`prepare_decode_ms_per_sample`). Frames are synthetic (textured shapes at A2D's 320-pixel
height); natural video compresses differently, so the ratios matter more than the bytes.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from losh.pipeline.prepare import PrepareSettings, prepare_a2d
from losh.pipeline.synth import write_synthetic_a2d
from losh.schemas.prepared_reader import PreparedDataset


def _decode_ms(prep: Path, repeats: int = 3) -> float:
    ds = PreparedDataset(prep)
    ds.read(ds.records[0])  # open the shard outside the timing
    start = time.perf_counter()
    for _ in range(repeats):
        for record in ds.records:
            ds.read(record)
    return (time.perf_counter() - start) * 1000 / (repeats * len(ds.records))


def _raw_gzip_bytes(prep: Path, work: Path) -> tuple[float, float]:
    """Same windows as uint8 arrays with gzip (the uncompressed alternative)."""
    ds = PreparedDataset(prep)
    path = work / "raw.h5"
    frames_per_video: dict[str, dict[int, np.ndarray]] = {}
    for r in ds.records:
        for n, frame in zip(r.window, ds.read_frames(r)):
            frames_per_video.setdefault(r.video_id, {})[n] = frame
    with h5py.File(path, "w") as f:
        for vid, frames in frames_per_video.items():
            stack = np.stack([frames[n] for n in sorted(frames)])
            f.create_dataset(vid, data=stack, compression="gzip", compression_opts=4, chunks=(1, *stack.shape[1:]))
    start = time.perf_counter()
    with h5py.File(path, "r") as f:
        for r in ds.records:
            f[r.video_id][:len(r.window)]
    ms = (time.perf_counter() - start) * 1000 / len(ds.records)
    return path.stat().st_size, ms


def main(argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_synthetic_a2d(work / "raw", videos=6, seed=0, height=320, width=448, frames=32,
                            annotated_per_video=3, progress=False)
        raw_frame_bytes = 320 * 448 * 3
        results = {}
        for codec, quality in (("jpeg", 90), ("jpeg", 95), ("png", 0)):
            prep = work / f"prep_{codec}{quality}"
            settings = PrepareSettings(window=8, short_side=320, max_long_side=576, codec=codec, jpeg_quality=quality or 90)
            manifest = prepare_a2d(work / "raw", prep, short_source="manual", settings=settings, workers=1,
                                   progress=False)
            frames_bytes = 0
            for shard in (prep / "shards").glob("*.h5"):
                with h5py.File(shard) as f:
                    frames_bytes += sum(len(b) for b in f["frames"][()])
            n_ann = manifest["counts"]["annotated_frames"]
            name = f"{codec}{quality}" if codec == "jpeg" else codec
            results[name] = {
                "bytes_per_annotated_frame": round(sum(p.stat().st_size for p in (prep / "shards").glob("*.h5")) / n_ann),
                "frame_bytes_per_annotated_frame": round(frames_bytes / n_ann),
                "decode_ms_per_sample": round(_decode_ms(prep), 3),
            }
        raw_bytes, raw_ms = _raw_gzip_bytes(work / "prep_jpeg90", work)
        n_ann = manifest["counts"]["annotated_frames"]
        results["raw_gzip4"] = {"bytes_per_annotated_frame": round(raw_bytes / n_ann),
                                "decode_ms_per_sample": round(raw_ms, 3)}
        windows_raw = 8 * raw_frame_bytes
        for name, r in results.items():
            print(json.dumps({"bench": f"prepare_storage_{name}", "value": r["bytes_per_annotated_frame"],
                              "unit": "bytes/annotated frame", "target": None,
                              "uncompressed_window_bytes": windows_raw, **r}))
        print(json.dumps({"bench": "prepare_decode_ms_per_sample", "value": results["jpeg90"]["decode_ms_per_sample"],
                          "unit": "ms", "target": None, "codec": "jpeg90",
                          "note": "reading one sample's 8-frame window and masks from the shard"}))


if __name__ == "__main__":
    main(sys.argv[1:])
