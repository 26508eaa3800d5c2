"""Exponential moving average of a model's weights (Polyak averaging), kept beside the training weights.

After each optimiser step every floating-point tensor of the state dict moves towards the model's:
    ema <- ema + (1 - d) * (weights - ema),   d = min(decay, (1 + n) / (10 + n)),  n = updates so far
The warm-up on d (as TensorFlow's ExponentialMovingAverage with num_updates) keeps the randomly
initialised weights of step 0 from dominating the average of a short run. Integer buffers and
non-tensor entries (the tiny text encoder's tokenizer, stored as extra state) follow the model's.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.weights: dict = {k: v.detach().clone() if isinstance(v, Tensor) else v
                              for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        state = model.state_dict()
        averaged = [(self.weights[k], v.detach()) for k, v in state.items()
                    if isinstance(v, Tensor) and v.is_floating_point()]
        if averaged:
            torch._foreach_lerp_([a for a, _ in averaged], [v.to(a.dtype) for a, v in averaged], 1.0 - d)
        for k, v in state.items():
            if not isinstance(v, Tensor):
                self.weights[k] = v
            elif not v.is_floating_point():
                self.weights[k].copy_(v)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for k, v in state["weights"].items():
            if isinstance(v, Tensor):
                self.weights[k].copy_(v)
            else:
                self.weights[k] = v
