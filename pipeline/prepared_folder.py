"""What `losh prepare-data` may do with its --out folder: resume, replace (overwrite) or refuse.

Resumed: a missing or empty folder, a partial run of prepare-data (only the names it writes, no manifest yet) and a
set prepared with the same settings. A set prepared with other settings (its manifest records them) is refused
naming them (PreparedSetDiffers), or with `overwrite` replaced: its flows, manifest, records and shards are removed
and nothing else. Any other non-empty folder is someone's data: refused (FolderNotEmpty), also with `overwrite`.
"""
from __future__ import annotations

import json
from pathlib import Path

from losh.pipeline.datasets import with_default_options
from losh.pipeline.datasets.jhmdb import METADATA_FILE
from losh.schemas.atomic import TEMPORARY_MARK
from losh.schemas.flows import FLOWS_DIR, INDEX_FILE
from losh.schemas.folders import FolderNotEmpty, check_writable_folder, folder_names
from losh.schemas.locks import LOCK_NAME

MANIFEST, RECORDS, REPORT, SHARDS = "manifest.json", "samples.jsonl", "report.json", "shards"
# what prepare-data (and compute-flows, in flows/) writes into OUT: a folder holding only these is its own
PREPARED_ENTRIES = frozenset({MANIFEST, RECORDS, REPORT, SHARDS, FLOWS_DIR, LOCK_NAME, METADATA_FILE})
# reader options that say where an input lies (as --root), not a setting
INPUT_LOCATIONS = ("samples_metadata", "images")


class PreparedSetDiffers(FolderNotEmpty):
    """OUT holds a prepared set made with other settings (the message names them): replaced only with overwrite."""


def recorded_reader_options(dataset: str, options: dict) -> dict:
    """The reader options as the manifest records them (defaults filled in, paths as text)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in with_default_options(dataset, options).items()}


def requested_settings(dataset: str, settings: dict, short_source: str, tagger: str, rule: str, options: dict) -> dict:
    """Everything a call asks that decides the prepared set (`settings`: PrepareSettings as a dict), by the name of
    its prepare-data option."""
    machine = short_source == "machine"
    return {"dataset": dataset, **settings, "short_text": short_source, "tagger": tagger if machine else None,
            "rule": rule if machine else None, **recorded_reader_options(dataset, options)}


def recorded_settings(manifest: dict) -> dict:
    """`requested_settings` as an existing manifest records them (fields an older manifest lacks are left out)."""
    short, resolution, codec = (manifest.get(k) or {} for k in ("short_text", "resolution", "codec"))
    found = {"dataset": manifest.get("dataset"), "window": manifest.get("window"),
             "short_side": resolution.get("short_side"), "max_long_side": resolution.get("max_long_side"),
             "codec": codec.get("format"), "jpeg_quality": codec.get("quality"), "decoder": manifest.get("decoder"),
             "short_text": short.get("source"), "tagger": short.get("tagger"), "rule": short.get("rule"),
             **(manifest.get("reader_options") or {})}
    return {k: v for k, v in found.items() if k in ("tagger", "rule") or v is not None}


def setting_changes(manifest: dict, wanted: dict, new_hash: str) -> dict[str, tuple]:
    """{option: (recorded, requested)} of what differs between an existing manifest and a call."""
    recorded = recorded_settings(manifest)
    changes = {k: (recorded[k], v) for k, v in wanted.items()
               if k in recorded and k not in INPUT_LOCATIONS and recorded[k] != v}
    if not changes and manifest.get("settings_hash", new_hash) != new_hash:
        changes["settings_hash"] = (manifest["settings_hash"], new_hash)   # a difference the fields do not show
    return changes


def describe_changes(changes: dict[str, tuple]) -> str:
    """'--window 8 -> 6, --short-side 64 -> 32' (the tagger and rule of a short-text switch go without saying)."""
    def name(key: str) -> str:
        return key if key == "settings_hash" else f"--{key.replace('_', '-')}"
    return ", ".join(f"{name(k)} {old} -> {new}" for k, (old, new) in changes.items()
                     if old is not None and new is not None)


def _read_manifest(out: Path) -> dict | None:
    """OUT's manifest as written, or None (none, or unreadable: a set that never finished)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _own_inner_name(name: str) -> bool:
    """A name prepare-data or compute-flows writes inside shards/ or flows/."""
    return name.endswith(".h5") or name in (INDEX_FILE, LOCK_NAME) or (name.startswith(".") and TEMPORARY_MARK in name)


def _own_top_name(name: str) -> bool:
    """A name prepare-data writes in OUT itself, or the temporary of one (a killed run's)."""
    base = name[1:].split(TEMPORARY_MARK, 1)[0] if name.startswith(".") and TEMPORARY_MARK in name else name
    return base in PREPARED_ENTRIES


def foreign_entries(out: Path) -> list[str]:
    """What in OUT prepare-data did not write (paths relative to OUT): a folder holding none is empty or a partial
    run of prepare-data (resumed), any other is someone's data."""
    foreign = [name for name in folder_names(out) if not _own_top_name(name)]
    for inner in (SHARDS, FLOWS_DIR):
        if (out / inner).is_dir():
            foreign += [f"{inner}/{name}" for name in folder_names(out / inner)
                        if not _own_inner_name(name) or (out / inner / name).is_dir()]
    return foreign


def replaces_existing_set(out: Path, wanted: dict, new_hash: str, overwrite: bool) -> bool:
    """Whether OUT holds a prepared set made with other settings that this run replaces (`overwrite`). Raises
    PreparedSetDiffers for such a set without `overwrite`, FolderNotEmpty for a folder that is not prepare-data's
    (also with `overwrite`: it is someone's data). A missing or empty OUT, a partial run and a set made with the
    same settings are resumed (False)."""
    check_writable_folder(out, "choose a folder for --out")
    manifest = _read_manifest(out)
    if manifest is None:
        foreign = foreign_entries(out)
        if foreign:
            raise FolderNotEmpty(f"{out} is not empty and is not a prepared data set (no {MANIFEST}; it holds e.g. "
                                 f"{foreign[0]}): it is left as it is; choose an empty folder for --out")
        return False
    changes = setting_changes(manifest, wanted, new_hash)
    if changes and not overwrite:
        raise PreparedSetDiffers(f"{out} holds a data set prepared with other settings ({describe_changes(changes)}):"
                                 f" pass --overwrite to replace it (and its flows) or choose another --out")
    return bool(changes)


def remove_prepared_set(out: Path) -> None:
    """Removes what prepare-data and compute-flows wrote in OUT, flows and manifest first (a run killed meanwhile
    leaves no manifest that describes missing shards); anything else in OUT stays."""
    _remove_own_files(out / FLOWS_DIR)
    for name in (MANIFEST, RECORDS, REPORT, METADATA_FILE):
        (out / name).unlink(missing_ok=True)
    _remove_own_files(out / SHARDS)


def _remove_own_files(folder: Path) -> None:
    """The files of `folder` that prepare-data or compute-flows writes, then `folder` itself when that empties it."""
    for name in folder_names(folder):
        path = folder / name
        if _own_inner_name(name) and (path.is_file() or path.is_symlink()):
            path.unlink(missing_ok=True)
    if folder.is_dir() and not folder_names(folder):
        folder.rmdir()
