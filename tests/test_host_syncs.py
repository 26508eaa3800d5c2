"""Host-device synchronisations of a training step (counted on the CPU), and matching in float32 under autocast."""
from collections import Counter

import pytest
import torch

from bench.host_syncs import count_host_syncs, count_step


def test_the_counter_sees_each_kind_of_sync():
    x = torch.arange(6.0)
    with count_host_syncs() as counts:
        x.sum().item()                       # scalar read
        bool(x.max() > 2)                    # scalar read
        x[x > 2]                             # boolean indexing: its size depends on the data
        x.nonzero()                          # idem
        x.cpu()                              # device -> host
        x.tolist()                           # idem
        torch.tensor([1, 2], device="cpu")   # host data -> device
        x.new_tensor([1.0])                  # idem
        x[[0, 2]]                            # a Python list as an index: copied to the device
        x[torch.tensor([0, 2])] = 1.0        # a Python number through tensor indices: idem
        x.repeat_interleave(torch.tensor([1, 1, 1, 1, 1, 1]))   # size from the data
        x * 2 + x.mean()                     # nothing
        x[1:3]                               # nothing: a view
        x[torch.tensor([0, 2])] = x[:2].clone()   # nothing: the value is on the device
    assert counts == Counter({"scalar_read": 2, "dynamic_shape": 3, "to_host": 2, "to_device": 4})


def test_reads_of_the_loaders_host_batch_are_not_syncs():
    host = torch.arange(3)
    with count_host_syncs(host_tensors=(host,)) as counts:
        host.tolist()
    assert sum(counts.values()) == 0


@pytest.mark.parametrize("spec, bound", [("tiny", 15), ("tiny-s", 30)])
def test_a_training_step_syncs_at_most_the_bound(spec, bound):
    """LoSh-M and LoSh-S's classes (the paper presets' counts are the same: `python -m bench.host_syncs`; this
    counter gave CUDA's own count, set_sync_debug_mode on an H200, for all four paper models before the syncs were
    removed): the step reads back only the finiteness of the loss, LoSh-M's matching costs (all layers at once)
    and what the text encoder's library reads; the loss log is one transfer every `log_every_steps`."""
    result = count_step(spec, steps=2, size=(32, 48))
    assert result["per_step"] <= bound, result
    assert result["per_step"] <= 4 and result["log_transfer"] == 1, result


def test_matching_runs_in_float32_under_bf16_autocast():
    from losh.models.losh_m.matcher import FrameTargets, LongShortMatcher
    from losh.models.losh_s.matcher import ReferredTarget, match_referred
    from losh.schemas.config import LossConfig

    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(3, 2 * 6 * 8, generator=g) > 0.5).float()
    target = FrameTargets(masks, masks.clone(), referred_index=1, size=(6, 8))
    # 1 sample, 2 supervised frames, 5 queries: (B, A, Q, 2) logits and (B, Q, A, h, w) masks, as a bf16 model gives
    layer = {p: {"pred_is_referred": torch.randn(1, 2, 5, 2, generator=g).bfloat16(),
                 "pred_masks": torch.randn(1, 5, 2, 6, 8, generator=g).bfloat16()} for p in ("long", "short")}
    matcher = LongShortMatcher()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cost, = matcher.costs(layer, [target])
    assert cost.dtype == torch.float32
    exact, = matcher.costs({p: {k: v.float() for k, v in out.items()} for p, out in layer.items()}, [target])
    assert torch.equal(cost, exact)

    low = torch.randn(2, 2, 5, 3, 4, generator=g)
    long = (torch.rand(2, 6, 8, generator=g) > 0.5).float()
    boxes = torch.rand(2, 4, generator=g) * 0.5 + 0.25
    referred = ReferredTarget(long, long, torch.tensor([True, False]), boxes, torch.tensor([True, False]), boxes)
    out = {"pred_logits": torch.randn(1, 2, 5, generator=g), "pred_boxes": torch.rand(1, 2, 5, 4, generator=g),
           "pred_masks_low": low[:1]}
    as_bf16 = {"long": {k: v.bfloat16() for k, v in out.items()}}
    from_bf16 = {"long": {k: v.bfloat16().float() for k, v in out.items()}}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chosen = match_referred(as_bf16, [referred], LossConfig())
    assert torch.equal(chosen, match_referred(from_bf16, [referred], LossConfig()))
