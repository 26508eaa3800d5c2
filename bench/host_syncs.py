"""Host-device synchronisations of a training step, counted on the CPU (no GPU needed).

On a GPU every one of these makes the host wait for the device's queue to drain, so a step with many of them is
CPU-bound: the GPU idles while Python reads a number back. Counted with a `TorchDispatchMode` on the trainer's own
step (`losh.training.loop.train_step`), and by wrapping the few Python-level calls that copy between host and
device:

    scalar_read      aten._local_scalar_dense: .item(), int(t), float(t), bool(t), `if t:`
    dynamic_shape    ops whose output size depends on the data (nonzero, masked_select, boolean indexing, unique,
                     repeat_interleave without output_size): the host must learn the size
    to_host          Tensor.cpu() and Tensor.tolist() (device -> host copies)
    to_device        blocking host -> device copies: torch.tensor / torch.as_tensor of host data with a device,
                     Tensor.new_tensor, indexing with a Python list (`x[:, [1, 3]]`: the list becomes an index
                     tensor on the host), and assigning a Python number through tensor indices (`x[i, j] = 1.0`)

`python -m bench.host_syncs [--steps 3]` prints `host_syncs_per_step_<model>` for LoSh-M, LoSh-S and their
baselines at the paper's dims (random weights, batch 3, a small input: the count does not depend on the size).
On a GPU, `make gpu-check` counts the real ones with `torch.cuda.set_sync_debug_mode`.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

TARGETS = {"losh-m": 15, "mttr": 15, "losh-s": 30, "sgmg": 30}
_DYNAMIC = {"nonzero", "masked_select", "unique_dim", "_unique", "_unique2", "unique_consecutive",
            "unique_dim_consecutive", "argwhere"}


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, counts: Counter, where: Counter | None) -> None:
        super().__init__()
        self.counts, self.where = counts, where

    def _hit(self, kind: str, name: str) -> None:
        self.counts[kind] += 1
        if self.where is not None:
            self.where[f"{kind}:{name}:{_caller()}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ("_local_scalar_dense", "is_nonzero", "equal"):
            self._hit("scalar_read", name)
        elif name in _DYNAMIC:
            self._hit("dynamic_shape", name)
        elif name == "repeat_interleave" and isinstance(args[0], torch.Tensor) and args[0].dim() >= 0 \
                and func.__name__.endswith("Tensor") and kwargs.get("output_size") is None and len(args) < 3:
            self._hit("dynamic_shape", name)
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])):
            self._hit("dynamic_shape", f"{name}[bool]")
        return func(*args, **kwargs)


def _caller(skip: int = 3) -> str:
    """file:line of the innermost frame of this project outside this module (for --where)."""
    import traceback

    for frame in reversed(traceback.extract_stack()[:-skip]):
        if any(part in frame.filename for part in ("/losh/", "/bench/train_step", "/pipeline/", "/schemas/")):
            return f"{frame.filename.rsplit('/', 3)[-2]}/{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "?"


@contextmanager
def count_host_syncs(where: Counter | None = None, host_tensors: tuple[torch.Tensor, ...] = ()):
    """Counts what would synchronise host and device (module docstring) into the yielded Counter; with `where`,
    also by kind, op and the project line that caused it. Reads of `host_tensors` (the batch as the loader hands
    it over: on the host on a GPU machine too) are not counted."""
    counts: Counter = Counter()
    on_host = {t.data_ptr() for t in host_tensors}
    patched = []

    def wrap(owner, name: str, kind: str, applies):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if applies(*args, **kwargs):
                counts[kind] += 1
                if where is not None:
                    where[f"{kind}:{name}:{_caller(2)}"] += 1
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)
        patched.append((owner, name, original))

    def host_data_to_device(data=None, *args, device=None, **kwargs):
        return device is not None and not isinstance(data, torch.Tensor)

    def from_device(tensor, *args, **kwargs):
        return tensor.data_ptr() not in on_host

    def list_index(tensor, key, *args):
        keys = key if isinstance(key, tuple) else (key,)
        return any(isinstance(k, list) for k in keys)

    def number_through_tensor_index(tensor, key, value):
        keys = key if isinstance(key, tuple) else (key,)
        return isinstance(value, (int, float, bool)) and any(isinstance(k, torch.Tensor) for k in keys)

    wrap(torch.Tensor, "cpu", "to_host", from_device)
    wrap(torch.Tensor, "tolist", "to_host", from_device)
    wrap(torch.Tensor, "new_tensor", "to_device", lambda *a, **k: True)
    wrap(torch.Tensor, "__getitem__", "to_device", list_index)
    wrap(torch.Tensor, "__setitem__", "to_device", lambda t, key, value: list_index(t, key) or
         number_through_tensor_index(t, key, value))
    wrap(torch, "tensor", "to_device", host_data_to_device)
    wrap(torch, "as_tensor", "to_device", host_data_to_device)
    try:
        with _DispatchCounter(counts, where):
            yield counts
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


def count_step(spec: str, steps: int = 3, size: tuple[int, int] = (64, 96), where: Counter | None = None) -> dict:
    """Syncs of `steps` training steps of `spec` (paper dims, random weights) after one uncounted warm-up step:
    per step, by kind."""
    from bench.train_step import NO_DOWNLOAD, host_batch
    from losh.models.registry import build_criterion, build_model
    from losh.schemas.config import with_overrides
    from losh.schemas.presets import get_config
    from losh.schemas.train import TrainSettings
    from losh.training.loop import LossLog, train_step
    from losh.training.optim import param_groups

    torch.manual_seed(0)
    config = with_overrides(get_config(spec), NO_DOWNLOAD)
    device = torch.device("cpu")
    model, criterion = build_model(config).train(), build_criterion(config)
    settings = TrainSettings()
    optimizer = torch.optim.AdamW(param_groups(model, settings.lr, settings.backbone_lr, settings.weight_decay,
                                               settings.text_encoder_lr), lr=settings.lr, fused=True)
    batch = host_batch(size, config.window, model)
    log = LossLog()
    train_step(model, model, criterion, optimizer, None, batch, device, settings, 0)   # warm-up, not counted
    host = tuple(v for v in batch.values() if isinstance(v, torch.Tensor))
    with count_host_syncs(where, host) as counts:
        for step in range(1, steps + 1):
            log.add(train_step(model, model, criterion, optimizer, None, batch, device, settings, step))
    with count_host_syncs() as logging:
        log.mean_and_reset()
    return {"per_step": round(sum(counts.values()) / steps, 2),
            "by_kind": {k: round(v / steps, 2) for k, v in sorted(counts.items())},
            "log_transfer": sum(logging.values()), "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.host_syncs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--models", default=",".join(TARGETS))
    parser.add_argument("--where", action="store_true", help="also list the lines that cause them")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    for spec in args.models.split(","):
        where: Counter | None = Counter() if args.where else None
        result = count_step(spec, args.steps, where=where)
        line = {"bench": f"host_syncs_per_step_{spec.replace('-', '_')}", "value": result["per_step"],
                "unit": "syncs", "target": TARGETS.get(spec), **result}
        if where is not None:
            line["where"] = {k: round(v / args.steps, 2) for k, v in where.most_common()}
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
