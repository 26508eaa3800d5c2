"""The optional linear lr warm-up (`lr_warmup_steps`): each step's lr, and the epoch schedule left untouched."""
import pytest
import torch

from losh.schemas.train import TrainConfigError, TrainSettings
from losh.training.optim import warmed_up


def _optimizer() -> torch.optim.Optimizer:
    weight = torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD([{"params": [weight], "lr": 0.3}, {"params": [torch.nn.Parameter(torch.zeros(1))],
                                                                "lr": 0.1}], lr=0.3)


def test_each_warm_up_step_runs_at_its_fraction_of_the_scheduled_lr_and_the_schedule_is_restored():
    optimizer = _optimizer()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [1], 0.5)
    seen = []
    for step in range(6):
        with warmed_up(optimizer, step, warmup_steps=4):
            seen.append([group["lr"] for group in optimizer.param_groups])
            optimizer.step()          # no gradients: a no-op that the scheduler expects first
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.3, 0.1] if step < 4 else [0.15, 0.05])
        if step == 3:
            scheduler.step()          # the epoch ends after 4 steps: x0.5, as without warm-up
    assert seen[:4] == [pytest.approx([0.3 * k / 4, 0.1 * k / 4]) for k in (1, 2, 3, 4)]
    assert seen[4:] == [pytest.approx([0.15, 0.05])] * 2


def test_no_warm_up_changes_nothing_and_the_setting_is_validated():
    optimizer = _optimizer()
    with warmed_up(optimizer, 0, warmup_steps=0):
        assert [g["lr"] for g in optimizer.param_groups] == [0.3, 0.1]
    assert TrainSettings().lr_warmup_steps == 0
    with pytest.raises(TrainConfigError, match="lr_warmup_steps"):
        TrainSettings(lr_warmup_steps=-1).validate()
