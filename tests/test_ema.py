import pytest
import torch
from torch import nn

from losh.training.ema import WeightAverage


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1, bias=False)
        self.register_buffer("count", torch.tensor(0))
        self.note = "a"

    def get_extra_state(self):
        return {"note": self.note}

    def set_extra_state(self, state):
        self.note = state["note"]


def test_average_follows_the_formula_with_its_warm_up():
    model = Tiny()
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor([[3.0, 6.0]]))
    model.count += 5
    model.note = "b"
    ema.update(model)
    # first update: d = min(0.9, 1/10) = 0.1 -> 0.1 * old + 0.9 * new
    assert ema.weights["linear.weight"][0].tolist() == pytest.approx([2.8, 5.6])
    assert int(ema.weights["count"]) == 5
    assert ema.state_dict()["weights"]["_extra_state"] == {"note": "b"}   # what is saved follows the model
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor([[0.0, 0.0]]))
    ema.update(model)
    d = 2 / 11  # second update: min(0.9, 2/11)
    assert ema.weights["linear.weight"][0].tolist() == pytest.approx([2.8 * d, 5.6 * d])
    assert ema.updates == 2
    # the warm-up ends: d reaches the configured decay
    ema.updates = 1000
    assert ema.current_decay() == 0.9


def test_state_round_trip_and_bad_decay():
    model = Tiny()
    ema = WeightAverage(model, decay=0.99)
    ema.update(model)
    other = WeightAverage(Tiny(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.99 and other.updates == 1
    assert torch.equal(other.weights["linear.weight"], ema.weights["linear.weight"])
    with pytest.raises(ValueError):
        WeightAverage(model, decay=1.0)


def test_train_settings_refuse_a_decay_outside_0_1():
    from losh.schemas.train import TrainConfigError, TrainSettings
    assert TrainSettings(ema_decay=0.999).validate().ema_decay == 0.999
    with pytest.raises(TrainConfigError, match="ema_decay"):
        TrainSettings(ema_decay=1.0).validate()
