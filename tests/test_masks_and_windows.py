import numpy as np
import pytest

from losh.pipeline.masks import group_by_short, merge_masks, short_key
from losh.pipeline.video import target_size, window_indices
from losh.schemas.prepared import SampleRecord, SchemaError, validate_manifest


def test_window_follows_mttr_convention_and_clamps():
    # f=10 (1-based), w=8: 0-based 9-4 .. 9+4 exclusive -> 5..12, annotated frame at position w//2
    assert window_indices(10, 100, 8) == [5, 6, 7, 8, 9, 10, 11, 12]
    assert window_indices(10, 100, 8)[8 // 2] == 9
    assert window_indices(2, 100, 8) == [0, 0, 0, 0, 1, 2, 3, 4]
    assert window_indices(20, 20, 8) == [15, 16, 17, 18, 19, 19, 19, 19]
    assert window_indices(3, 10, 5) == [0, 1, 2, 3, 4]


def test_target_size_short_side_and_long_cap():
    assert target_size(240, 320, 320, 576) == (320, 427)
    assert target_size(320, 1000, 320, 576) == (184, 576)   # long side capped, short side follows
    assert target_size(128, 176, 128, 176) == (128, 176)


def test_short_groups_merge_masks_of_instances_sharing_the_short_expression():
    shorts = [(0, "The small green square"), (1, "small green square"), (2, "a red circle")]
    groups = group_by_short(shorts)
    assert groups == [(0, 1), (0, 1), (2,)]
    # several expressions of one instance (Refer-YouTube-VOS) and one whose instance is private
    assert group_by_short([(3, "a dog"), (3, "the dog"), (4, "dog"), (-1, "a dog")]) == [(3, 4), (3, 4), (3, 4), ()]
    assert short_key("The Red  circle.") == "red circle"
    masks = np.zeros((3, 4, 5), dtype=bool)
    masks[0, 0, :2] = True   # instance 0: 2 pixels
    masks[1, 3, 3:] = True   # instance 1: 2 pixels
    masks[2, 1:3, 1:3] = True
    ids = np.array([0, 1, 2])
    merged = merge_masks(ids, masks, list(groups[0]))
    expected = np.zeros((4, 5), dtype=bool)
    expected[0, :2] = True
    expected[3, 3:] = True
    assert (merged == expected).all()
    assert merged.sum() == 4
    # a member absent from this frame contributes nothing; no member at all gives an empty mask
    assert (merge_masks(np.array([1, 2]), masks[1:], [0, 1]) == masks[1]).all()
    assert not merge_masks(np.array([2]), masks[2:], [0, 1]).any()


def _record(**over):
    d = dict(sample_id="v_1_00005", video_id="v", expression_id="1", subset="", instance_id=1, frame=5, split="train",
             kind="window", long="a dog running", short="a dog", shard="shards/v.h5", window=[3, 4, 5, 6],
             targets=[2], target_frames=[5], referred_index=0, short_index=0, short_instance_ids=[1], size=[32, 48],
             orig_size=[64, 96], video_frames=10)
    d.update(over)
    return d


def test_record_validation_gives_clear_errors():
    assert SampleRecord.from_dict(_record()).short_merged is False
    assert SampleRecord.from_dict(_record(short_instance_ids=[1, 2])).short_merged is True
    with pytest.raises(SchemaError, match="split"):
        SampleRecord.from_dict(_record(split="validation"))
    with pytest.raises(SchemaError, match="missing fields"):
        d = _record()
        del d["window"]
        SampleRecord.from_dict(d)
    with pytest.raises(SchemaError, match="not MTTR's window of 4 around frame 5 clamped to 10 frames"):
        SampleRecord.from_dict(_record(window=[2, 3, 5, 6]))
    with pytest.raises(SchemaError, match="does not show frame 5 at position 1"):
        SampleRecord.from_dict(_record(window=[1, 2]))
    with pytest.raises(SchemaError, match="targets must be positions"):
        SampleRecord.from_dict(_record(targets=[7], target_frames=[5]))
    with pytest.raises(SchemaError, match="kind"):
        SampleRecord.from_dict(_record(kind="clip"))
    # a whole-video sample of a split whose masks are private: no targets, no instance
    video = SampleRecord.from_dict(_record(kind="video", window=list(range(1, 11)), targets=[], target_frames=[],
                                           instance_id=-1, short_instance_ids=[], frame=1, split="valid"))
    assert video.kind == "video" and not video.targets
    with pytest.raises(SchemaError, match=r"frame numbers 1..5"):   # frame 6 of a 5-frame video
        SampleRecord.from_dict(_record(video_frames=5))
    with pytest.raises(SchemaError, match="video_frames"):
        SampleRecord.from_dict(_record(video_frames=0))
    with pytest.raises(SchemaError, match="long must be"):
        SampleRecord.from_dict(_record(long=""))


def test_manifest_version_mismatch_is_refused():
    with pytest.raises(SchemaError, match="version 99"):
        validate_manifest({"schema": "losh.prepared", "version": 99})
    with pytest.raises(SchemaError, match="not a losh.prepared"):
        validate_manifest({"schema": "something", "version": 1})


def test_record_past_the_decoded_end_keeps_mttr_clamped_window():
    # annotated frame 11 of a video that decodes to 10 frames: MTTR shows the last frame everywhere
    # from the annotated position on; the record is valid and says so
    r = SampleRecord.from_dict(_record(frame=11, sample_id="v_1_00011", window=[9, 10, 10, 10], video_frames=10,
                                       target_frames=[11]))
    assert r.past_end and r.annotated_position == 2 and r.window[r.annotated_position] == 10
    assert [i + 1 for i in window_indices(11, 10, 4)] == r.window
    assert not SampleRecord.from_dict(_record()).past_end
