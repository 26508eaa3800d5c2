"""Exponential moving average of a model's weights (Polyak averaging), kept beside the training weights.

After each optimiser step every floating-point tensor of the state dict moves towards the model's:
    ema <- ema + (1 - d) * (weights - ema),   d = min(decay, (1 + n) / (10 + n)),  n = updates so far
The warm-up on d (as TensorFlow's ExponentialMovingAverage with num_updates) keeps the randomly
initialised weights of step 0 from dominating the average of a short run. Integer buffers and
non-tensor entries (the tiny text encoder's tokenizer, stored as extra state) follow the model's
(taken when the average is saved).
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
        self.model = model
        state = model.state_dict()
        self.weights: dict = {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in state.items()}
        # the state dict's tensors share the parameters' storage, which the optimiser updates in place: pair
        # them once instead of building a state dict at every step
        tensors = [(self.weights[k], v.detach()) for k, v in state.items() if isinstance(v, Tensor)]
        self._floats = [(a, v) for a, v in tensors if v.is_floating_point()]
        self._others = [(a, v) for a, v in tensors if not v.is_floating_point()]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> None:
        if model is not None and model is not self.model:
            raise ValueError("WeightAverage.update: not the model this average was made for")
        d = self.current_decay()
        if self._floats:
            torch._foreach_lerp_([a for a, _ in self._floats], [v.to(a.dtype) for a, v in self._floats], 1.0 - d)
        for a, v in self._others:
            a.copy_(v)
        self.updates += 1

    def state_dict(self) -> dict:
        # non-tensor entries (extra state such as the tiny tokenizer) are the model's current ones
        for k, v in self.model.state_dict().items():
            if not isinstance(v, Tensor):
                self.weights[k] = v
        return {"decay": self.decay, "updates": self.updates, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for k, v in state["weights"].items():
            if isinstance(v, Tensor):
                self.weights[k].copy_(v)
            else:
                self.weights[k] = v
