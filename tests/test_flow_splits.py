"""compute-flows --split: flows of one split's annotated frames, the index says which splits it
covers, `all` after `train` computes only what is missing, and reading another split's frame says
how to add its flows."""
import shutil

import pytest
from typer.testing import CliRunner

from losh.cli.main import app
from losh.pipeline.flow_verify import verify_flows
from losh.pipeline.flows import compute_flows
from losh.schemas.flow_reader import FlowReader, FlowsMissing
from losh.schemas.flows import FlowParams
from losh.schemas.prepared_reader import PreparedDataset


@pytest.fixture()
def prep(prepared, tmp_path):
    dst = tmp_path / "prep"
    shutil.copytree(prepared, dst, ignore=shutil.ignore_patterns("flows"))
    return dst


def videos_of(prep, split):
    return sorted({r.video_id for r in PreparedDataset(prep, split).records})


def test_train_then_all_computes_only_the_test_videos(prep):
    train, test = videos_of(prep, "train"), videos_of(prep, "test")
    assert train and test and not set(train) & set(test)

    run = compute_flows(prep, split="train", workers=0, progress=False)
    assert run.index["splits"] == ["train"] and run.computed == train and not run.resumed
    assert sorted(e["video_id"] for e in run.index["videos"]) == train
    train_frames = {(r.video_id, r.frame) for r in PreparedDataset(prep, "train").records}
    assert run.index["counts"]["annotated_frames"] == len(train_frames)
    assert not list((prep / "flows").glob(f"{test[0]}.h5"))
    assert verify_flows(prep, samples=2).ok   # coverage is checked for the splits the index covers

    reader = FlowReader(prep)
    assert reader.splits == ("train",)
    r_train = PreparedDataset(prep, "train").records[0]
    assert reader.read(r_train.video_id, r_train.frame)[0].shape[0] == 4
    r_test = PreparedDataset(prep, "test").records[0]
    with pytest.raises(FlowsMissing, match=rf"video '{r_test.video_id}' frame {r_test.frame}: it is a test sample "
                                           r"and .*index.json covers only the train split; run `losh compute-flows --data "
                                           rf"{prep} --split test` \(or --split all\)"):
        reader.read(r_test.video_id, r_test.frame)
    with pytest.raises(FlowsMissing, match="not an annotated frame of this PREP"):
        reader.read(r_train.video_id, 999)

    run = compute_flows(prep, split="all", workers=0, progress=False)
    assert run.computed == test and run.resumed == train
    assert run.index["splits"] == ["train", "test"]
    reader = FlowReader(prep)
    assert reader.read(r_test.video_id, r_test.frame)[0].shape[0] == 4

    # a later train run with the same parameters keeps the test split covered and computes nothing
    run = compute_flows(prep, split="train", workers=0, progress=False)
    assert run.computed == [] and run.index["splits"] == ["train", "test"]
    # other parameters: the earlier index does not count, only the asked split is computed
    run = compute_flows(prep, FlowParams(stride=8), split="test", workers=0, progress=False)
    assert run.computed == test and run.index["splits"] == ["test"]


def test_cli_defaults_to_the_train_split(prep):
    result = CliRunner().invoke(app, ["compute-flows", str(prep), "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    train = videos_of(prep, "train")
    assert "flows of the train split: " in result.output and f"{len(train)} videos computed, 0 kept" in result.output
    result = CliRunner().invoke(app, ["compute-flows", str(prep), "--workers", "0", "--no-progress", "--split", "all"])
    assert result.exit_code == 0, result.output
    assert "flows of the train+test split" in result.output
    assert f"{len(videos_of(prep, 'test'))} videos computed, {len(train)} kept" in result.output
    result = CliRunner().invoke(app, ["compute-flows", str(prep), "--split", "valid"])
    assert result.exit_code == 2 and "--split must be one of train, test, all" in result.output


def test_python_api_refuses_an_unknown_split(prep):
    with pytest.raises(ValueError, match="split must be one of train, test, all, got 'val'"):   # A2D's splits
        compute_flows(prep, split="val", workers=0, progress=False)


def test_a_listed_but_deleted_shard_says_so(prep):
    compute_flows(prep, split="train", workers=0, progress=False)
    r = PreparedDataset(prep, "train").records[0]
    (prep / "flows" / f"{r.video_id}.h5").unlink()
    with pytest.raises(FlowsMissing, match=rf"{r.video_id}.h5 is listed in flows/index.json but missing: re-run"):
        FlowReader(prep).read(r.video_id, r.frame)
