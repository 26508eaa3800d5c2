"""`losh train`: LoSh-M, LoSh-S, their baselines and ablations on the prepared shards, one GPU, many (torchrun), or CPU.

Read top to bottom: set-up (devices, seeds, run folder), data, model, optimiser, resume, then the
loop. The data loader reads only shards (frames, masks, flows); the GPU never waits on video
decoding or optical flow.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from losh.data.dataset import Augment, ClipDataset, RVOSDataset, collate, collate_clips, normalise_frames
from losh.data.mixture import MixtureDataset
from losh.errors import NonFiniteOutputs
from losh.models.registry import build_criterion, build_model
from losh.schemas.atomic import remove_stale_temporaries
from losh.schemas.config import ModelConfig, with_overrides
from losh.schemas.flows import FLOWS_DIR
from losh.schemas.locks import folder_lock, refuse_if_locked
from losh.schemas.prepared import still_images
from losh.schemas.progress import progress_bar
from losh.schemas.train import SAFE_TO_CHANGE_ON_RESUME, TrainSettings
from losh.training.checkpoint import (
    CHECKPOINT_SCHEMA,
    CHECKPOINT_VERSION,
    atomic_copy,
    atomic_save,
    capture_rng,
    load_checkpoint,
    restore_rng,
)
from losh.training.device import (
    autocast_for,
    padding_mask_of,
    seed_everything,
    select_device,
    setup_distributed,
    to_device,
)
from losh.training.ema import WeightAverage
from losh.training.init_from import initialise_from
from losh.training.optim import main_lr, param_groups, warmed_up
from losh.training.tensorboard_log import (
    cuda_memory,
    learning_rates,
    loss_scalars,
    open_tensorboard,
    validation_number,
    validation_scalars,
)
from losh.training.throughput import Throughput


class NonFiniteLoss(RuntimeError):
    """Training stopped: a loss became NaN/inf. The last checkpoint on disk is the last good one."""


class RunExists(RuntimeError):
    """RUN already holds a checkpoint and --resume was not given."""


class SettingsChanged(ValueError):
    """--resume with settings that would make it another run (the message names them)."""


def run_is_finished(checkpoint: dict, settings: TrainSettings) -> bool:
    """Whether a run's last checkpoint already holds everything these settings ask for."""
    return checkpoint["epoch"] >= settings.epochs or bool(settings.max_steps and
                                                          checkpoint["global_step"] >= settings.max_steps)


class ResumableSampler(Sampler):
    """A sampler whose epoch can start past its first `skip` indices (a run resumed inside an epoch), so that
    the batches already trained are neither trained again nor loaded."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler, self.skip = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def run_settings(out: Path) -> TrainSettings:
    """The settings a run in `out` was trained with (from its last checkpoint): the base that --resume
    starts from, so that only the options given on the command line change."""
    return TrainSettings.from_dict(load_checkpoint(Path(out) / "checkpoints" / "last.pt")["train_settings"])


def forward_and_loss(model, criterion, batch: dict, device: torch.device, amp: str) -> dict[str, torch.Tensor]:
    """One batch through the model and the loss (shared by the trainer and the benchmarks). `batch` as the loader
    gives it (on the host, pinned): its small integers (window positions, referred instances, clips, frame sizes)
    are read there, so that nothing in the step waits for the GPU to hand a number back; then it moves to
    `device`."""
    annotated = batch["annotated_index"].tolist()                     # host tensors: no device sync
    if any(a != annotated[0] for a in annotated):
        raise ValueError("a batch must share the annotated frame's window position")
    valid_sizes = [tuple(v) for v in batch["valid_size"].tolist()]
    clip_index = batch.get("clip_index")
    clip_of = clip_index.tolist() if clip_index is not None else list(range(len(batch["long_text"])))
    referred = batch["referred_index"].tolist()
    on_device = to_device(batch, device)
    frames = normalise_frames(on_device["frames"], on_device["valid_size"])
    size = tuple(frames.shape[-2:])
    padded = any(v != size for v in valid_sizes)
    padding = padding_mask_of(on_device["valid_size"], size, device) if padded else None
    # valid_size: the frame's unpadded size (LoSh-S's box targets are normalised by it)
    targets = [{"instance_masks": m, "referred_index": r, "long_mask": lm, "short_mask": sm,
                "valid_size": valid_sizes[c]}
               for m, r, lm, sm, c in zip(on_device["instance_masks"], referred, on_device["long_mask"],
                                          on_device["short_mask"], clip_of)]
    # LoSh-S matches in its forward (as SgMg) to refine only the matched query: it takes the targets
    matching = {"targets": targets} if getattr(getattr(model, "module", model), "matches_in_forward", False) else {}
    with autocast_for(device, amp):
        outputs = model(frames, batch["long_text"], batch["short_text"], annotated_index=annotated[0],
                        padding_mask=padding, clip_index=clip_index.cpu() if clip_index is not None else None,
                        supervised=batch.get("supervised"), text_tokens=on_device.get("text_tokens"), **matching)
    return criterion(outputs, targets, flows=on_device.get("flows"), flow_valid=on_device.get("flow_valid"),
                     flow_frame_size=size)


def train_step(net: torch.nn.Module, model: torch.nn.Module, criterion: torch.nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, batch: dict,
               device: torch.device, settings: TrainSettings, global_step: int,
               ema: WeightAverage | None = None, stats: dict | None = None) -> dict[str, torch.Tensor]:
    """One optimiser step on `batch` (the loop's body, also what the benchmarks time and count): forward, loss,
    backward, clipping, AdamW (with the warm-up), EMA. Returns the detached loss terms, still on the device;
    raises `NonFiniteOutputs` (with the terms) when the predictions or the loss are not finite (the weights are
    then not updated). One host sync: the finiteness check. `stats`, when given, receives "grad_norm": the
    gradients' norm before clipping, on the device (read with the losses, at the log steps)."""
    losses = forward_and_loss(net, criterion, batch, device, settings.amp)
    loss = losses["loss"]
    if not torch.isfinite(loss):                     # the step's one sync: never step on a NaN
        raise NonFiniteOutputs("non-finite loss", {k: float(v.detach()) for k, v in losses.items()})
    optimizer.zero_grad(set_to_none=True)
    scale = scaler is not None and scaler.is_enabled()
    (scaler.scale(loss) if scale else loss).backward()
    if settings.clip_max_norm > 0:
        if scale:
            scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_max_norm)
        if stats is not None:
            stats["grad_norm"] = norm.detach()
    with warmed_up(optimizer, global_step, settings.lr_warmup_steps):
        if scale:
            scaler.step(optimizer)
        else:
            optimizer.step()
    if scale:
        scaler.update()
    if ema is not None:
        ema.update(model)
    return {k: v.detach() for k, v in losses.items() if "_aux" not in k}


class LossLog:
    """Sums of the loss terms over steps, kept on the device: read back to the host in one transfer when the
    loop logs (every `log_every_steps`), not at every step."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for key, value in losses.items():
            self._sums[key] = self._sums[key] + value if key in self._sums else value.clone()
        self.steps += 1

    def mean_and_reset(self) -> dict[str, float]:
        """The mean of each term since the last call (one device -> host copy), and a fresh start."""
        if not self.steps:
            return {}
        keys = list(self._sums)
        values = (torch.stack([self._sums[k].float() for k in keys]) / self.steps).tolist()
        self._sums, self.steps = {}, 0
        return dict(zip(keys, values))


def dataset_manifest(data: Path) -> dict:
    from losh.schemas.prepared_reader import load_manifest
    return load_manifest(Path(data))


def validation_for_data(settings: TrainSettings, manifest: dict) -> TrainSettings:
    """The validation split and metric this data set can give: a split it lacks (A2D's default "test" on
    Refer-YouTube-VOS) becomes the data set's own evaluation split, and a whole-video split ranks best.pt by
    J&F (it has no mean IoU)."""
    split = settings.eval_split if settings.eval_split in manifest["splits"] else manifest["eval_split"]
    metric = settings.best_metric
    if manifest["splits"][split]["kind"] == "video" and metric not in ("jf", "j", "f"):
        metric = "jf"
    if (split, metric) == (settings.eval_split, settings.best_metric):
        return settings
    return TrainSettings.from_dict({**settings.to_dict(), "eval_split": split, "best_metric": metric})


def config_for_data(config: ModelConfig, manifest: dict) -> ModelConfig:
    """The config as this run trains it: short_text_source "data" becomes the prepared data's, and a machine
    short text's rule and tagger the data's (NLTK asked, spaCy's tagger where NLTK's data was missing at
    prepare time); recorded in the run's config.json and checkpoints, and used at inference."""
    short = manifest["short_text"]
    overrides = {}
    if config.short_text_source == "data":
        overrides["short_text_source"] = short["source"]
    if short["source"] == "machine" and config.use_short_text:
        overrides.update({"short_text_rule": short.get("rule") or config.short_text_rule,
                          "short_text_tagger": short.get("tagger") or config.short_text_tagger})
    return with_overrides(config, overrides) if overrides else config


def short_text_note(config: ModelConfig, manifest: dict) -> str | None:
    """What a run says when its machine short text's tagger is not the one the config names (the rule is the
    same: `check_data_matches_config` refuses another)."""
    short = manifest["short_text"]
    if config.use_short_text and config.short_text_source == "machine" and short["source"] == "machine" \
            and short.get("tagger") and short["tagger"] != config.short_text_tagger:
        return (f"config {config.name!r} names the {config.short_text_tagger} tagger; the data's machine short text "
                f"was tagged by {short['tagger']} with the same rule ({short.get('rule')}): trained and recorded so")
    return None


def check_data_matches_config(manifest: dict, config: ModelConfig) -> None:
    """Refuse a prepared set whose window or short text differs from what the config trains. Still images (RefCOCO)
    become clips of the config's window, whatever the data's; they have no optical flow, so L_fbc must be off."""
    if still_images(manifest, "train"):
        if config.loss.fbc > 0:
            raise ValueError(f"the train split of this {manifest['dataset']} set holds still images: they have no "
                             f"optical flow, so L_fbc (loss.fbc={config.loss.fbc:g}) cannot be trained on them; "
                             "pass `--set loss.fbc=0`")
    elif manifest["window"] != config.window:
        raise ValueError(f"the config trains on windows of {config.window} frames but the data was prepared with "
                         f"--window {manifest['window']} ({manifest['dataset']}); pass `losh train --window "
                         f"{manifest['window']}` or prepare again with --window {config.window}")
    if not config.use_short_text or config.short_text_source == "data":
        return
    source, rule = manifest["short_text"]["source"], manifest["short_text"].get("rule")
    if source != config.short_text_source:
        hint = ("append ':msh' (the paper's first-verb rule) or ':msh-subject' to the preset"
                if source == "machine" else "use a config with short_text_source 'manual'")
        raise ValueError(f"config {config.name!r} trains on {config.short_text_source} short text, but the data "
                         f"holds {source} short text (prepare-data --short-text {source}); {hint}, or re-prepare "
                         f"with --short-text {config.short_text_source}")
    if source == "machine" and rule != config.short_text_rule:
        raise ValueError(f"config {config.name!r} trains on the machine short text of the {config.short_text_rule} "
                         f"rule, but the data holds the {rule} rule's; prepare a set with `losh prepare-data "
                         f"--short-text machine --rule {config.short_text_rule} --tagger {config.short_text_tagger}` "
                         f"(another --out)")


def check_same_short_text(manifests: dict[Path, dict]) -> None:
    """The sets of a mixture ({path: manifest}) hold the same kind of short text (source and rule): one config
    trains on them."""
    kinds = {str(p): (m["short_text"]["source"], m["short_text"].get("rule")) for p, m in manifests.items()}
    if len(set(kinds.values())) > 1:
        raise ValueError("the prepared sets of --data hold different short texts (" + ", ".join(
            f"{p}: {source}{f' {rule}' if rule else ''}" for p, (source, rule) in kinds.items())
            + "): prepare them with the same --short-text and --rule")


def non_finite_loss(what: str, terms: dict[str, float], ckpt_path: Path) -> NonFiniteLoss:
    return NonFiniteLoss(f"{what}: {terms}; the last good checkpoint is "
                         f"{ckpt_path if ckpt_path.exists() else 'not written yet'}")


def train(data: Path | Sequence[Path], config: ModelConfig, out: Path, settings: TrainSettings, *,
          resume: bool = False, device: str | None = None, progress: bool = True, init_from: Path | None = None,
          init_parts: Sequence[str] = ()) -> dict:
    """Train and return a summary (epochs, steps, last losses, checkpoint path). `data`: a prepared set, or several
    trained on as one mixture (the first validates). `init_from`: a new run starts from that checkpoint's weights
    (within `init_parts`, prefixes of the model's names; `init_from.py`)."""
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        with ExitStack() as stack:   # the run folder's lock, held until the run ends
            return _train(data, config, out, settings, resume=resume, device=device, progress=progress,
                          stack=stack, init_from=init_from, init_parts=init_parts)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


def _train(data: Path | Sequence[Path], config: ModelConfig, out: Path, settings: TrainSettings, *, resume: bool,
           device: str | None, progress: bool, stack: ExitStack, init_from: Path | None,
           init_parts: Sequence[str]) -> dict:
    # several prepared sets: one mixture (every sample of each once an epoch); the first one validates
    sets = [Path(p) for p in data] if isinstance(data, (list, tuple)) else [Path(data)]
    data = sets[0]
    settings.validate()
    d = setup_distributed()
    dev = select_device(d, device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = Path(out)
    refuse_if_locked(out, "losh train")      # another process writes this run now: say so before anything else
    manifests = {prep: dataset_manifest(prep) for prep in sets}
    manifest = manifests[data]
    for other in manifests.values():                # the config as asked, before the data's values fill it in
        check_data_matches_config(other, config)
    check_same_short_text(manifests)
    short_text_line = short_text_note(config, manifest)
    config = config_for_data(config, manifest)
    ckpt_path = out / "checkpoints" / "last.pt"
    checkpoint = None
    if ckpt_path.exists():
        if not resume:
            raise RunExists(f"{out} already holds a run ({ckpt_path}); pass --resume to continue it, "
                            "or choose another --out")
        checkpoint = load_checkpoint(ckpt_path)
        saved = ModelConfig.from_dict(checkpoint["model_config"])
        if saved.training_part() != config.training_part():
            raise ValueError(f"--resume: {out} was trained with config {saved.name!r}; resume it with that config")
        safe_changes, unsafe_changes = settings.changes_from(TrainSettings.from_dict(checkpoint["train_settings"]))
        if unsafe_changes:
            raise SettingsChanged(
                f"--resume: {out} was trained with other settings: "
                + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in unsafe_changes.items())
                + f"; resume with the run's settings ({out / 'train.json'}) or start a new run in another --out "
                  f"(what may change on resume: {', '.join(SAFE_TO_CHANGE_ON_RESUME)})")
    elif resume:
        raise FileNotFoundError(f"--resume: no checkpoint in {out / 'checkpoints'}")
    if checkpoint is not None and run_is_finished(checkpoint, settings):
        # nothing to train: no file of the run is touched (no settings rewritten, no log line, no checkpoint)
        if dist.is_initialized():
            dist.destroy_process_group()
        return {"epochs": checkpoint["epoch"], "steps": checkpoint["global_step"], "last_losses": {},
                "checkpoint": str(ckpt_path), "seconds": 0.0, "device": str(dev), "process_group": None,
                "best": checkpoint.get("best"), "nothing_to_train": True}
    seed_everything(settings.seed + d.rank)
    if settings.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    # ---- data: shards only, prepared the way this config expects
    settings = validation_for_data(settings, manifest)
    with_flows = config.loss.fbc > 0
    augment = Augment(settings.scales, settings.max_long_side, settings.flip_p)
    parts = []
    for prep in sets:
        # still images: clips of the config's window made from each (losh/data/still_images.py)
        clip_frames = config.window if still_images(manifests[prep], "train") else None
        if settings.expressions_per_clip > 1:
            parts.append(ClipDataset(prep, "train", max_expressions=settings.expressions_per_clip,
                                     with_flows=with_flows, seed=settings.seed, augment=augment,
                                     clip_frames=clip_frames))
        else:
            parts.append(RVOSDataset(prep, "train", with_flows=with_flows, seed=settings.seed, augment=augment,
                                     clip_frames=clip_frames))
        # before the run folder exists: the data it reads is whole, and no writer is working on it now
        refuse_if_locked(prep, "losh train")
        if with_flows:
            refuse_if_locked(prep / FLOWS_DIR, "losh train")
    dataset = parts[0] if len(parts) == 1 else MixtureDataset(parts)
    dataset.check_readable()
    if d.main:   # one writer per run folder; a second `losh train --out` here is refused at once
        stack.enter_context(folder_lock(out, "losh train"))
        remove_stale_temporaries(out / "checkpoints")

    # ---- model, loss, optimiser
    # resuming, or starting from another checkpoint's backbone: the Kinetics-400 file is not read
    backbone_from_init = init_from is not None and (not init_parts or "backbone" in
                                                    [p.strip().rstrip(".") for p in init_parts])
    model = build_model(config, load_pretrained=checkpoint is None and not backbone_from_init)
    if model.text_encoder.trained_tokenizer and checkpoint is None:
        # randomly initialised text encoder (tiny): its tokenizer learns the training vocabulary
        texts = dataset.texts if isinstance(dataset, MixtureDataset) else \
            {t for r in dataset.data.records for t in (r.long, r.short)}
        model.text_encoder.fit_tokenizer(sorted(texts))
    # a new run from another checkpoint's weights (resuming: this run's own checkpoint has them)
    init_report = initialise_from(model, init_from, init_parts) if init_from and checkpoint is None else None
    if init_report and backbone_from_init and not any(k.startswith("backbone.") for k in init_report.loaded):
        raise ValueError(f"--init-from {init_from} holds no backbone weights for this model: start from the "
                         "Kinetics-400 file (backbone.weights) and leave the backbone out of --init-parts")
    model.to(dev)
    criterion = build_criterion(config).to(dev)
    optimizer = torch.optim.AdamW(param_groups(model, settings.lr, settings.backbone_lr, settings.weight_decay,
                                               settings.text_encoder_lr), lr=settings.lr,
                                  weight_decay=settings.weight_decay, fused=True)   # one kernel: 16 -> 5 ms a demo step
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(settings.lr_milestones), settings.lr_gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda" and settings.amp == "fp16")
    epoch, step_in_epoch, global_step = 0, 0, 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        epoch, step_in_epoch, global_step = checkpoint["epoch"], checkpoint["step_in_epoch"], checkpoint["global_step"]
        restore_rng(checkpoint["rng"])
    # the loader's workers tokenize the texts (with the model's tokenizer: fitted above, or the checkpoint's) and
    # pin the token ids with the batch
    # (one batch's texts need no tokenizer threads, and forked workers must not inherit a used thread pool)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    collate_fn = partial(collate_clips if settings.expressions_per_clip > 1 else collate,
                         tokenize=model.text_encoder.batch_tokenizer(config.use_short_text))
    sampler = ResumableSampler(DistributedSampler(dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True,
                                                  seed=settings.seed))
    # the loader draws its workers' seeds from its own generator, seeded per epoch: a run resumed mid-epoch sees
    # the same seeds, and the global random state (dropout, ...) is the checkpoint's, not moved by the loader
    loader_seeds = torch.Generator()
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, collate_fn=collate_fn,
                        generator=loader_seeds,
                        num_workers=settings.num_workers, pin_memory=dev.type == "cuda",
                        persistent_workers=settings.num_workers > 0, drop_last=False)
    ema = WeightAverage(model, settings.ema_decay) if settings.ema_decay > 0 else None
    if ema is not None and checkpoint is not None and checkpoint.get("model_ema") is not None:
        ema.load_state_dict(checkpoint["model_ema"])
    # static_graph: the same parameters take part in every step (some configs leave a few out, e.g. aux heads
    # without aux losses); DDP learns which on the first step instead of searching the graph every step
    net = DistributedDataParallel(model, static_graph=True) if d.world_size > 1 else model

    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
        (out / "train.json").write_text(json.dumps(settings.to_dict(), indent=1))
        if short_text_line:
            tqdm.write(f"note: {short_text_line}")
        if init_report is not None:   # what came from where: the three lists
            (out / "init-from.json").write_text(json.dumps(init_report.to_dict(), indent=1))
            if progress:
                tqdm.write(f"{init_report.line()}; lists in {out / 'init-from.json'}")
    log = open(out / "metrics.jsonl", "a", encoding="utf-8") if d.main else None
    board = open_tensorboard(out, settings.log, global_step, lambda line: tqdm.write(line, file=sys.stderr)) \
        if d.main else None
    if board is not None:
        stack.callback(board.close)
    if log and checkpoint is not None:
        log.write(json.dumps({"resume": {"epoch": epoch, "step": global_step,
                                         "changed": {k: list(v) for k, v in safe_changes.items()}}}) + "\n")
        log.flush()
    best = checkpoint.get("best") if checkpoint is not None else None   # {"metric", "value", "epoch"}

    def save(epoch_: int, step_in_epoch_: int) -> None:
        if not d.main:
            return
        atomic_save({
            "schema": CHECKPOINT_SCHEMA, "version": CHECKPOINT_VERSION, "model_config": config.to_dict(),
            "train_settings": settings.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch_,
            "step_in_epoch": step_in_epoch_, "global_step": global_step,
            "data": ",".join(str(p.resolve()) for p in sets),
            # how the training frames were prepared: `losh predict` resizes a user's video the same way
            "data_preparation": {"dataset": manifest["dataset"], "window": manifest["window"],
                                 "resolution": manifest["resolution"]},
            "model_ema": ema.state_dict() if ema is not None else None, "best": best,
            "rng": capture_rng(),
        }, ckpt_path)

    last_step: dict[str, torch.Tensor] = {}
    start = time.time()
    stop = False
    while epoch < settings.epochs and not stop:
        sampler.set_epoch(epoch)
        sampler.skip = step_in_epoch * settings.batch_size    # resumed mid-epoch: the same order, from there on
        loader_seeds.manual_seed((settings.seed * 1_000_003 + epoch) * 1_009 + d.rank)
        dataset.set_epoch(epoch)
        net.train()
        window, whole_epoch = LossLog(), LossLog()      # since the last log line / this epoch, on the device
        bar = progress_bar(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch", initial=step_in_epoch,
                           total=step_in_epoch + len(loader), disable=not (progress and d.main))
        speed = Throughput(d.world_size)     # a new epoch: its loader's start-up counts as waiting
        for i, batch in enumerate(speed.batches(bar), start=step_in_epoch):
            stats: dict[str, torch.Tensor] = {}
            try:
                last_step = train_step(net, model, criterion, optimizer, scaler, batch, dev, settings, global_step, ema,
                                       stats=stats)
            except NonFiniteOutputs as error:   # NaN predictions or loss: stop before the weights change
                where = f"at epoch {epoch + 1}, step {i + 1} (samples {batch['sample_id']})"
                detail = "" if str(error) == "non-finite loss" else f" ({error})"
                raise non_finite_loss(f"non-finite loss{detail} {where}", error.terms, ckpt_path) from None
            window.add({**last_step, **stats})
            whole_epoch.add(last_step)
            speed.count(len(batch["frames"]))    # clips: a host tensor's size, no sync
            global_step += 1
            step_in_epoch = i + 1
            if global_step % settings.log_every_steps == 0:
                means = window.mean_and_reset()      # the one device -> host copy of these steps' losses
                grad_norm = means.pop("grad_norm", None)
                bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in means.items()
                                 if k in ("loss", "loss_dice_long", "loss_lsi", "loss_fbc")})
                warm = min(1.0, global_step / settings.lr_warmup_steps) if settings.lr_warmup_steps else 1.0
                if log:
                    log.write(json.dumps({"epoch": epoch + 1, "step": global_step, "lr": main_lr(optimizer) * warm,
                                          "time_s": round(time.time() - start, 2), **means}) + "\n")
                    log.flush()
                if board is not None:
                    board.scalars(global_step, {**loss_scalars(means), **learning_rates(optimizer, warm),
                                                "train/grad_norm": grad_norm, **speed.read(), **cuda_memory(dev)})
            if settings.checkpoint_every_steps and global_step % settings.checkpoint_every_steps == 0:
                save(epoch, step_in_epoch)
            if settings.max_steps and global_step >= settings.max_steps:
                stop = True
                bar.n = step_in_epoch       # the bar counts a batch only when the next one is asked for
                bar.close()
                break
        if not stop:
            scheduler.step()
            epoch, step_in_epoch = epoch + 1, 0
        save(epoch, step_in_epoch)       # before any evaluation: an evaluation that fails loses no training
        if settings.eval_every and step_in_epoch == 0 and (epoch % settings.eval_every == 0 or epoch == settings.epochs):
            if d.main:
                number = validation_number(epoch, settings.eval_every)
                pictures = board is not None and settings.log_images_every > 0 and \
                    (number - 1) % settings.log_images_every == 0
                metrics = validation_metrics(model, ema, data, settings, progress=progress, pictures=pictures)
                if board is not None:
                    board.scalars(global_step, validation_scalars(metrics))
                    if metrics.get("overlays") is not None:
                        board.picture("val/overlays", global_step, metrics["overlays"])
                value = metrics.get(settings.best_metric)
                if value is not None and (best is None or value > best["value"]):
                    best = {"metric": settings.best_metric, "value": value, "epoch": epoch}
                    save(epoch, step_in_epoch)   # last.pt records the new best
                    atomic_copy(ckpt_path, ckpt_path.with_name("best.pt"))
                scores = {k: metrics.get(k) for k in ("mean_iou", "overall_iou", "map", "jf")}
                log.write(json.dumps({"eval": {"epoch": epoch, "step": global_step, "split": settings.eval_split,
                                               "samples": metrics["samples"], "resolution": "prepared", **scores},
                                      "best": best}) + "\n")
            if d.world_size > 1:
                dist.barrier()   # the other ranks wait for rank 0's evaluation
        if log:
            log.write(json.dumps({"epoch_end": epoch, "step": global_step, "time_s": round(time.time() - start, 2),
                                  **{f"mean_{k}": v for k, v in whole_epoch.mean_and_reset().items()}}) + "\n")
            log.flush()
    if log:
        log.close()
    process_group = None
    if dist.is_initialized():
        process_group = f"{dist.get_backend()} x{d.world_size}"
        dist.barrier()
        dist.destroy_process_group()
    # the last step's losses, read back once
    last = dict(zip(last_step, torch.stack(list(last_step.values())).float().tolist())) if last_step else {}
    return {"epochs": epoch, "steps": global_step, "last_losses": last, "checkpoint": str(ckpt_path),
            "seconds": round(time.time() - start, 1), "device": str(dev), "process_group": process_group, "best": best,
            "init_from": init_report.line() if init_report is not None else None}


def validation_metrics(model: torch.nn.Module, ema: WeightAverage | None, data: Path, settings: TrainSettings, *,
                       progress: bool = False, pictures: bool = False) -> dict:
    """Metrics of the weights that `losh evaluate` would score (the average when there is one) on the
    validation split or its subset; the training weights and mode are left as they were. With `pictures`, also
    "overlays": an RGB picture of a fixed few validation expressions (frame, ground truth, long- and short-text
    masks), the same expressions at every validation."""
    import copy

    from losh.evaluation.evaluate import evaluate_model
    from losh.evaluation.validation_pictures import validation_overlays

    scored = model
    if ema is not None:
        scored = copy.deepcopy(model)
        scored.load_state_dict(ema.state_dict()["weights"])
    was_training = model.training
    try:
        # at the prepared size: no raw data set needed during training (`losh evaluate` scores the original size)
        metrics = evaluate_model(scored, data, split=settings.eval_split, max_samples=settings.eval_samples,
                                 resolution="prepared", progress=progress, require_tagger=False)
        if pictures:
            metrics["overlays"] = validation_overlays(scored, data, settings.eval_split)
        return metrics
    finally:
        model.train(was_training)
