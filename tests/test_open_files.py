"""The readers keep a bounded number of HDF5 files open (LRU), re-open evicted ones with the same
data, and never use a parent's handles in a forked or spawned worker."""
import multiprocessing
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from bench.loader_scale import scale_prep
from losh.schemas.flow_reader import FlowReader
from losh.schemas.open_files import MAX_OPEN_ENV, OpenFiles
from losh.schemas.prepared_reader import PreparedDataset

SHARDS = 40
BOUND = 5


@pytest.fixture(scope="module")
def many_shards(prepared_with_flows, tmp_path_factory) -> Path:
    """40 videos (prepared shards + flow shards) made from the fixture's videos (read-only)."""
    return scale_prep(prepared_with_flows, tmp_path_factory.mktemp("many") / "prep", SHARDS)


def open_h5_files(root: Path) -> int:
    """Descriptors of this process open on .h5 files under root (what the OS sees, not our dict)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(str(root)) and target.endswith(".h5")
    return count


def read_all(ds: PreparedDataset, flows: FlowReader, records) -> list:
    out = []
    for r in records:
        s = ds.read(r)
        out.append((s.frames, s.long_mask, s.short_mask, *flows.read(r.video_id, r.frame)))
    return out


def test_open_files_stay_within_the_bound_and_evicted_shards_read_the_same(many_shards):
    ds = PreparedDataset(many_shards, max_open_shards=BOUND)
    flows = FlowReader(many_shards, max_open_shards=BOUND)
    reference = PreparedDataset(many_shards, max_open_shards=0)
    reference_flows = FlowReader(many_shards, max_open_shards=0)
    base = open_h5_files(many_shards)   # files other tests' readers may still hold
    expected = read_all(reference, reference_flows, reference.records)
    assert len(reference.files) == len(reference_flows.files) == SHARDS   # unbounded: every shard stays open
    assert open_h5_files(many_shards) == base + 2 * SHARDS
    reference.close(), reference_flows.close()
    assert open_h5_files(many_shards) == base

    # two passes in a shuffled order: shards are evicted, then re-opened on the second pass
    order = list(range(len(ds.records)))
    np.random.default_rng(0).shuffle(order)
    most = 0
    for i in order + order[::-1]:
        r = ds.records[i]
        got = read_all(ds, flows, [r])[0]
        for a, b in zip(got, expected[i]):
            assert np.array_equal(a, b)
        most = max(most, open_h5_files(many_shards) - base)
        assert len(ds.files) <= BOUND and len(flows.files) <= BOUND
    assert most == 2 * BOUND
    videos = {r.video_id for r in ds.records}
    assert len(videos) == SHARDS
    assert ds.files.opened > SHARDS and flows.files.opened > SHARDS   # evicted shards were opened again
    ds.close(), flows.close()
    assert open_h5_files(many_shards) == base


def test_bound_from_the_environment(many_shards, monkeypatch):
    monkeypatch.setenv(MAX_OPEN_ENV, "3")
    ds = PreparedDataset(many_shards)
    for r in ds.records:
        ds.read(r)
        assert len(ds.files) <= 3
    assert len(ds.files) == 3 and FlowReader(many_shards).files.max_open == 3
    assert PreparedDataset(many_shards, max_open_shards=7).files.max_open == 7   # the caller's value wins
    monkeypatch.setenv(MAX_OPEN_ENV, "many")
    with pytest.raises(ValueError, match=f"{MAX_OPEN_ENV}='many': expected an integer >= 0"):
        PreparedDataset(many_shards)
    monkeypatch.delenv(MAX_OPEN_ENV)
    assert PreparedDataset(many_shards).files.max_open == 64


def _child_reads(ds: PreparedDataset, flows: FlowReader, expected: np.ndarray, queue) -> None:
    before = (len(ds.files), len(flows.files))
    r = ds.records[-1]
    same = np.array_equal(ds.read(r).frames, expected) and flows.read(r.video_id, r.frame)[0].shape[0] == 4
    queue.put((before, (len(ds.files), len(flows.files)), ds.files.opened, same))


def test_forked_and_spawned_readers_start_without_handles(many_shards):
    ds = PreparedDataset(many_shards, max_open_shards=BOUND)
    flows = FlowReader(many_shards, max_open_shards=BOUND)
    first_of_video = list({r.video_id: r for r in ds.records}.values())
    for r in first_of_video[:10]:
        ds.read(r), flows.read(r.video_id, r.frame)
    assert len(ds.files) == len(flows.files) == BOUND and ds.files.opened == 10
    parent_keys = ds.files.keys()
    expected = PreparedDataset(many_shards).read(ds.records[-1]).frames
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(ds, flows, expected, queue))
    child.start()
    before, after, opened, same = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert before == (0, 0) and after == (1, 1) and opened == 1 and same
    assert ds.files.keys() == parent_keys and ds.files.opened == 10   # the parent's handles are untouched
    copy = pickle.loads(pickle.dumps(ds))   # what a spawned worker gets
    assert len(copy.files) == 0 and copy.files.max_open == BOUND
    assert np.array_equal(copy.read(ds.records[-1]).frames, expected)


def test_a_failing_check_closes_the_file(many_shards):
    files = OpenFiles(2)
    path = many_shards / "shards" / "v00000.h5"
    base = open_h5_files(many_shards)

    def reject(key: str, f: h5py.File) -> None:
        raise ValueError(f"{key} rejected")

    with pytest.raises(ValueError, match="a rejected"):
        files.get("a", path, reject)
    assert len(files) == 0 and open_h5_files(many_shards) == base
    with pytest.raises(ValueError, match="max_open must be >= 0"):
        OpenFiles(-1)
