"""Model and loss configuration of LoSh-M and LoSh-S (and their MTTR/SgMg baselines and ablations): validated,
versioned.

A config is a frozen `ModelConfig` made of parts (`backbone`, `text`, `transformer`, `loss`, and `sgmg` for
SgMg's own parts); `architecture` says which model it builds ("mttr": LoSh-M/MTTR, "sgmg": LoSh-S/SgMg).
The named presets are in `losh.schemas.presets`, the ablation switches ("PRESET:ABLATION") in `losh.schemas.ablations`;
`with_overrides` changes dotted fields of a config ("loss.fbc": 0.0).

JSON form (`save_config` / `load_config`): {"schema": "losh.model_config", "version": 2, ...fields};
unknown or missing fields, another schema or another version are errors, never silently ignored.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from losh.schemas.atomic import atomic_write_text

CONFIG_SCHEMA = "losh.model_config"
CONFIG_VERSION = 4
# What a version-1 config (before these switches existed) meant: read it with that behaviour.
_V1_BEHAVIOUR = {"text": {"lowercase": False}, "loss": {"fbc_reduction": "mean"},
                 "inference_short_pathway": "none"}
# What a version-3 config meant (before the paper's per-frame terms and the short pathway's own visibility were
# switches): read it so. "short_visibility" depends on the architecture (`_upgrade_v3`).
_V3_BEHAVIOUR = {"loss": {"frame_terms": "sequence", "match_lsi_columns": "referred", "lsi_queries": "referred"},
                 "short_text_rule": "subject", "short_text_tagger": "spacy"}
# What a version-2 config meant (before the reference models' own behaviours were switches): read it so.
_V2_BEHAVIOUR = {"text": {"collapse_whitespace": False, "dropout_when_frozen": False, "as_written_in_videos": False,
                          "layer_norm_eps": 1e-12},
                 "loss": {"boxes_in_absent_frames": False},
                 "sgmg": {"sentence_feature": "mean", "position_offset": 0.0, "pad_multiple": 1,
                          "pad_multiple_videos": 1}}

CrossAttention = Literal["none", "long_from_short", "short_from_long", "bidirectional"]
FbcVariant = Literal["standard", "opposite", "mutual"]
DecodeFrames = Literal["annotated", "all"]
ShortTextSource = Literal["data", "manual", "machine"]
FbcReduction = Literal["mean", "pixel_mean", "sum"]
MaskResolution = Literal["input", "stride4"]
FrameTerms = Literal["per_frame", "sequence"]
ShortVisibility = Literal["short", "long"]
LsiColumns = Literal["referred", "all"]
LsiQueries = Literal["referred", "matched"]
ShortTextRule = Literal["subject", "first-verb"]
ShortTextTagger = Literal["spacy", "nltk"]
InferenceShortPathway = Literal["encoder", "none"]
LongShortAttention = Literal["deformable", "dense"]
# "mttr": LoSh-M and MTTR (losh/models/losh_m/model.py); "sgmg": LoSh-S and SgMg (losh/models/losh_s/model.py)
Architecture = Literal["mttr", "sgmg"]
BackboneVariant = Literal["custom", "swin-t", "swin-b"]
# The Video Swin variants' dims (Liu et al. 2022); "custom" takes the dims as given (the tiny presets).
SWIN_VARIANTS: dict[str, dict[str, Any]] = {
    "swin-t": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "swin-b": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
}


class ConfigError(ValueError):
    """A configuration value is invalid, or a config file does not follow this schema/version."""


@dataclass(frozen=True)
class BackboneConfig:
    """Video Swin built from torchvision's SwinTransformer3d, adapted as MTTR does.

    `depths`/`num_heads` describe all four Swin stages (as in the weight files and for the stochastic
    depth schedule); the first `num_stages` are built: 3 (MTTR, LoSh-M: strides 4, 8, 16, the fourth
    dropped) or 4 (SgMg, LoSh-S: strides 4 to 32). `variant` names the dims ("swin-t", "swin-b": overriding
    `backbone.variant` sets them) or "custom" (dims as given).
    """

    variant: str = "custom"
    num_stages: int = 3
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: tuple[int, int, int] = (8, 7, 7)
    patch_size: tuple[int, int, int] = (1, 4, 4)   # temporal 1: every frame keeps its own features
    stochastic_depth: float = 0.1
    weights: str | None = None       # local torchvision Swin3D_T_Weights file or official Video Swin checkpoint
    require_weights: bool = True     # paper presets: building without `weights` is an error
    trainable: bool = True

    def validate(self) -> None:
        _check_choice("backbone.variant", self.variant, BackboneVariant)
        if self.variant != "custom":
            dims = {"embed_dim": self.embed_dim, "depths": tuple(self.depths), "num_heads": tuple(self.num_heads)}
            if dims != SWIN_VARIANTS[self.variant]:
                raise ConfigError(f"backbone.variant {self.variant!r} has {SWIN_VARIANTS[self.variant]}, the config "
                                  f"says {dims}: set backbone.variant to 'custom' for other dims")
        if self.num_stages not in (3, 4):
            raise ConfigError(f"backbone.num_stages must be 3 (strides 4-16) or 4 (strides 4-32), "
                              f"got {self.num_stages}")
        if self.embed_dim <= 0:
            raise ConfigError(f"backbone.embed_dim must be positive, got {self.embed_dim}")
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ConfigError("backbone.depths and backbone.num_heads describe the 4 Swin stages "
                              f"(the 4th is dropped), got {self.depths} and {self.num_heads}")
        if any(d < 1 for d in self.depths) or any(h < 1 for h in self.num_heads):
            raise ConfigError("backbone.depths and backbone.num_heads must be >= 1")
        for stage in range(self.num_stages):
            dim = self.embed_dim * 2 ** stage
            if dim % self.num_heads[stage]:
                raise ConfigError(f"backbone stage {stage}: width {dim} is not divisible by "
                                  f"{self.num_heads[stage]} heads")
        if len(self.window_size) != 3 or min(self.window_size) < 1:
            raise ConfigError(f"backbone.window_size must be 3 positive ints, got {self.window_size}")
        if len(self.patch_size) != 3 or self.patch_size[0] != 1 or min(self.patch_size) < 1:
            raise ConfigError("backbone.patch_size must be (1, p, p): a temporal patch of 1 keeps "
                              f"per-frame features, got {self.patch_size}")
        if not 0.0 <= self.stochastic_depth < 1.0:
            raise ConfigError(f"backbone.stochastic_depth must be in [0, 1), got {self.stochastic_depth}")


@dataclass(frozen=True)
class TextConfig:
    """Text encoder: a Hugging Face encoder by name or local path, never downloaded.

    `pretrained=False` builds a randomly initialised RoBERTa of the dims below and a byte-level BPE
    tokenizer trained on the fly (deterministic): the `tiny` preset and the FLOPs benchmark.
    """

    encoder: str = "roberta-base"
    pretrained: bool = True
    freeze: bool = True
    max_tokens: int = 64
    lowercase: bool = True           # MTTR lowercases every expression before the tokenizer (RoBERTa is cased)
    collapse_whitespace: bool = True  # runs of spaces become one (MTTR's and SgMg's `" ".join(text.split())`)
    # MTTR and SgMg call model.train() on the whole model: their frozen RoBERTa's dropout is on in training
    dropout_when_frozen: bool = True
    # SgMg's Refer-YouTube-VOS and Refer-DAVIS17 inference feeds the expression as written (no lowercasing or
    # whitespace clean-up; RoBERTa is cased): whole-video inference does the same when this is on
    as_written_in_videos: bool = False
    # dims of the random RoBERTa (used only when pretrained is False)
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 50265
    layer_norm_eps: float = 1e-5     # roberta-base's (transformers' RobertaConfig default is 1e-12)

    def validate(self) -> None:
        if not self.encoder:
            raise ConfigError("text.encoder must name a Hugging Face model or a local directory")
        if self.max_tokens < 4:
            raise ConfigError(f"text.max_tokens must be >= 4, got {self.max_tokens}")
        if not self.pretrained:
            if min(self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size) < 1:
                raise ConfigError("text dims must be positive")
            if self.hidden_size % self.num_heads:
                raise ConfigError(f"text.hidden_size {self.hidden_size} not divisible by "
                                  f"text.num_heads {self.num_heads}")
            if self.vocab_size < 300:
                raise ConfigError("text.vocab_size must be >= 300 (256 byte symbols + specials + merges)")


@dataclass(frozen=True)
class TransformerConfig:
    """Multimodal transformer, decoder and heads (MTTR's values where the paper is silent)."""

    d_model: int = 256
    nheads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    num_encoder_layers: int = 4
    num_decoder_layers: int = 3
    num_queries: int = 50
    mask_kernel_dim: int = 8
    # long_from_short: the paper's CA (long queries, short keys/values) in the even-numbered layers
    cross_attention: CrossAttention = "long_from_short"
    # annotated: only the annotated frame goes through the transformer (MTTR on A2D); all: every frame
    decode_frames: DecodeFrames = "annotated"
    # add the expression's mean text feature to every object query (SgMg/ReferFormer, the paper's
    # LoSh-S); MTTR, hence LoSh-M, does not: off in the paper presets
    text_conditioned_queries: bool = False

    def validate(self) -> None:
        if self.d_model % self.nheads:
            raise ConfigError(f"transformer.d_model {self.d_model} not divisible by nheads {self.nheads}")
        for name in ("dim_feedforward", "num_encoder_layers", "num_decoder_layers", "num_queries",
                     "mask_kernel_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"transformer.{name} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"transformer.dropout must be in [0, 1), got {self.dropout}")
        _check_choice("transformer.cross_attention", self.cross_attention, CrossAttention)
        _check_choice("transformer.decode_frames", self.decode_frames, DecodeFrames)
        if self.cross_attention != "none" and self.num_encoder_layers < 2:
            raise ConfigError("cross-attention replaces the even-numbered encoder layers: "
                              "it needs num_encoder_layers >= 2")


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (paper eq. 5-7; MTTR's dice 5 / focal 2 = lambda_seg 5 with focal at 0.4)."""

    is_referred: float = 2.0
    dice: float = 5.0
    focal: float = 2.0
    lsi: float = 5.0
    fbc: float = 0.1
    eos_coef: float = 0.1              # weight of the "not referred" class (MTTR)
    lsi_threshold: float = 0.5
    lsi_epsilon: float = 1.0
    fbc_variant: FbcVariant = "standard"
    fbc_level: int = 2                 # backbone stage of F_v: 2 = stride 16, the features entering the transformer
    # how eq. 6's squared norm is reduced over a feature map: "pixel_mean" sums the squared differences over
    # the channels (the squared L2 distance of two feature vectors) and averages over the valid pixels;
    # "mean" also averages over the channels; "sum" sums over both (the norm of the whole map). See README.
    fbc_reduction: FbcReduction = "pixel_mean"
    aux_loss: bool = True
    # where mask terms (matching, dice, focal, L_lsi) compare: "input" (MTTR): predictions upsampled bilinearly
    # to the input size; "stride4": targets area-averaged onto the predictions' stride-4 grid (a cell is on when
    # more than half of it is), 16x fewer pixels (a CPU recipe's lever; not the paper's)
    mask_resolution: MaskResolution = "input"
    match_is_referred: float = 2.0
    match_dice: float = 5.0
    match_lsi: float = 5.0
    # architecture "sgmg" only (SgMg's detection and mask terms; LoSh-M/MTTR have no boxes): the loss weights
    # of the box L1 and GIoU terms and the matching costs of boxes and of the mask focal term
    box_l1: float = 5.0
    giou: float = 2.0
    match_box_l1: float = 5.0
    match_giou: float = 2.0
    match_focal: float = 2.0
    # SgMg: the box terms (matching cost and loss) take every supervised frame, a frame without the object with
    # an all-zero target box; off: only the frames where it is visible
    boxes_in_absent_frames: bool = False
    # a query's masks over several supervised frames (Refer-YouTube-VOS): "per_frame" (the paper's eq. 1 and 5 sum
    # per-frame terms; MTTR's dice and matching cost are per frame, averaged over the frames), "sequence" (the
    # frames as one mask). Focal is the same either way; SgMg's own mask terms are always over the sequence
    frame_terms: FrameTerms = "per_frame"
    # the short pathway's "referred" class is on in the frames where its own target (the short expression's mask)
    # is visible (eq. 3: p^s_gt), or, with "long", where the long expression's is
    short_visibility: ShortVisibility = "short"
    # the paper is silent on these two; the official LoSh code adds L_lsi to every instance's matching cost
    # ("all") and averages the L_lsi loss over every matched query ("matched"): `losh-m:official`
    match_lsi_columns: LsiColumns = "referred"
    lsi_queries: LsiQueries = "referred"

    def validate(self) -> None:
        for name in ("is_referred", "dice", "focal", "lsi", "fbc", "match_is_referred", "match_dice",
                     "match_lsi", "lsi_epsilon", "box_l1", "giou", "match_box_l1", "match_giou", "match_focal"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.match_is_referred == 0 and self.match_dice == 0 and self.match_lsi == 0:
            raise ConfigError("the matching cost needs at least one non-zero term")
        if not 0.0 <= self.eos_coef <= 1.0:
            raise ConfigError(f"loss.eos_coef must be in [0, 1], got {self.eos_coef}")
        if not 0.0 <= self.lsi_threshold < 1.0:
            raise ConfigError(f"loss.lsi_threshold must be in [0, 1), got {self.lsi_threshold}")
        if self.fbc_level not in (0, 1, 2):
            raise ConfigError(f"loss.fbc_level is a backbone stage 0, 1 or 2, got {self.fbc_level}")
        _check_choice("loss.fbc_variant", self.fbc_variant, FbcVariant)
        _check_choice("loss.fbc_reduction", self.fbc_reduction, FbcReduction)
        _check_choice("loss.mask_resolution", self.mask_resolution, MaskResolution)
        _check_choice("loss.frame_terms", self.frame_terms, FrameTerms)
        _check_choice("loss.short_visibility", self.short_visibility, ShortVisibility)
        _check_choice("loss.match_lsi_columns", self.match_lsi_columns, LsiColumns)
        _check_choice("loss.lsi_queries", self.lsi_queries, LsiQueries)


@dataclass(frozen=True)
class SgmgConfig:
    """SgMg's own parts (architecture "sgmg": LoSh-S and its SgMg baseline), SgMg's values. The widths, heads,
    layers (4 encoder, 4 decoder), queries (5) and dropout come from `transformer`."""

    num_feature_levels: int = 4      # the backbone's strides 8, 16, 32 and a stride-2 conv on top for 64
    enc_points: int = 4              # deformable attention: sampling points per head and level
    dec_points: int = 4
    box_refine: bool = True          # iterative box refinement (each decoder layer refines the boxes)
    controller_layers: int = 2       # dynamic 1x1 convolutions of the mask head
    dynamic_channels: int = 16       # their width; the last one's 16 outputs are a 4 x 4 sub-pixel patch
    relative_coords: bool = True     # the mask head sees each pixel's offset to the query's reference point
    fft_sigma: float = 7.0           # width of the Gaussian of the spectrum modulation (SCF)
    # the queries' content: "pooler" (SgMg: RoBERTa's pooler output, projected) or "mean" (of the word features)
    sentence_feature: str = "pooler"
    # DETR-style 2D sine positions: SgMg normalises (cumsum - 0.5) / last, DETR and MTTR cumsum / last (offset 0)
    position_offset: float = 0.5
    # frames padded bottom/right to a multiple of this inside the model, with a padding mask (SgMg: 32 in training
    # and window evaluation, its collate; 16 in whole-video inference, its forward); 1: not padded
    pad_multiple: int = 32
    pad_multiple_videos: int = 16
    # LoSh's CA: "deformable" (long queries sample the short map nearby) or "dense" (3.4: short tokens as keys/values)
    long_short_attention: LongShortAttention = "deformable"

    def validate(self) -> None:
        if self.num_feature_levels not in (3, 4):
            raise ConfigError(f"sgmg.num_feature_levels must be 3 (strides 8-32) or 4 (plus 64), got "
                              f"{self.num_feature_levels}")
        for name in ("enc_points", "dec_points", "controller_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sgmg.{name} must be >= 1")
        if self.dynamic_channels != 16:
            raise ConfigError("sgmg.dynamic_channels must be 16: the last dynamic convolution's outputs are a 4 x 4 "
                              "sub-pixel patch (pixel shuffle by 4)")
        if self.fft_sigma <= 0:
            raise ConfigError(f"sgmg.fft_sigma must be positive, got {self.fft_sigma}")
        if self.sentence_feature not in ("pooler", "mean"):
            raise ConfigError(f"sgmg.sentence_feature must be 'pooler' or 'mean', got {self.sentence_feature!r}")
        if self.pad_multiple < 1 or self.pad_multiple_videos < 1:
            raise ConfigError("sgmg.pad_multiple and sgmg.pad_multiple_videos must be >= 1")
        _check_choice("sgmg.long_short_attention", self.long_short_attention, LongShortAttention)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "losh-m"
    architecture: str = "mttr"
    use_short_text: bool = True
    # the short texts trained on: "manual" (the data set's annotated short_query), "machine" (the tagger's), or
    # "data": what the prepared data holds (the paper finds the two equivalent, table 2); a run records which
    short_text_source: ShortTextSource = "data"
    # the machine short text: the rule and tagger of `losh shorten` ("first-verb": the paper's, 4.4.1; "subject":
    # ours, closer to human short texts). Training on machine short text, the data must hold this one (a run on
    # "data" records the data's); at inference the short text is derived from the long expression with it
    short_text_rule: ShortTextRule = "subject"
    short_text_tagger: ShortTextTagger = "spacy"
    window: int = 8                                  # frames per sample around the annotated frame
    # inference (paper 3.8: the short prediction head is deactivated, the long expression is what is given):
    # "encoder" runs the short text derived from the long expression by the tagger through the multimodal
    # encoder, whose tokens are the keys/values of the long pathway's cross-attention as in training; "none"
    # runs the long pathway alone (its cross-attention layers then attend to long tokens)
    inference_short_pathway: InferenceShortPathway = "encoder"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    text: TextConfig = field(default_factory=TextConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sgmg: SgmgConfig = field(default_factory=SgmgConfig)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"model config version {self.version}, this toolkit reads version {CONFIG_VERSION}")
        if not self.name:
            raise ConfigError("a model config needs a name")
        if self.window < 1:
            raise ConfigError(f"window must be >= 1, got {self.window}")
        _check_choice("architecture", self.architecture, Architecture)
        _check_choice("short_text_source", self.short_text_source, ShortTextSource)
        _check_choice("short_text_rule", self.short_text_rule, ShortTextRule)
        _check_choice("short_text_tagger", self.short_text_tagger, ShortTextTagger)
        _check_choice("inference_short_pathway", self.inference_short_pathway, InferenceShortPathway)
        self.backbone.validate()
        self.text.validate()
        self.transformer.validate()
        self.loss.validate()
        self.sgmg.validate()
        wanted_stages = 4 if self.architecture == "sgmg" else 3
        if self.backbone.num_stages != wanted_stages:
            raise ConfigError(f"architecture {self.architecture!r} takes backbone.num_stages = {wanted_stages}, got "
                              f"{self.backbone.num_stages}")
        if self.architecture == "sgmg" and self.loss.mask_resolution != "input":
            raise ConfigError("loss.mask_resolution 'stride4' is LoSh-M's (architecture 'mttr'): LoSh-S compares its "
                              "refined masks at the input size and its stride-2 masks on their grid, as SgMg")
        if self.architecture == "sgmg" and not self.transformer.text_conditioned_queries:
            raise ConfigError("architecture 'sgmg' always conditions its queries on the sentence (SgMg): "
                              "transformer.text_conditioned_queries must be true")
        if self.architecture == "mttr" and self.transformer.d_model % 64:
            raise ConfigError(f"architecture 'mttr': transformer.d_model must be a multiple of 64 (the spatial "
                              f"decoder's GroupNorm(8) runs on d_model/8 channels), got {self.transformer.d_model}")
        if self.architecture == "sgmg" and self.transformer.d_model % 32:
            raise ConfigError("architecture 'sgmg' projects each level with GroupNorm(32): transformer.d_model must "
                              f"be a multiple of 32, got {self.transformer.d_model}")
        if not self.use_short_text:
            if self.transformer.cross_attention != "none":
                raise ConfigError("cross-attention between the long and short pathways needs the short "
                                  "text: set transformer.cross_attention = 'none' or use_short_text = true")
            if self.loss.lsi > 0 or self.loss.match_lsi > 0:
                raise ConfigError("L_lsi compares long and short predictions: set loss.lsi = "
                                  "loss.match_lsi = 0 or use_short_text = true")
            if self.inference_short_pathway != "none":
                raise ConfigError("inference_short_pathway 'encoder' needs the short text: set it to 'none' "
                                  "or use_short_text = true")

    def training_part(self) -> dict[str, Any]:
        """The config as training sees it: without the switches that change inference only (a run may be
        resumed, and is compared, whatever they say)."""
        body = self.to_dict()
        body.pop("inference_short_pathway")
        return body

    @property
    def inference_uses_short_text(self) -> bool:
        """Whether inference runs the short text through the encoder: only where the long pathway reads it."""
        return (self.use_short_text and self.inference_short_pathway == "encoder"
                and self.transformer.cross_attention in ("long_from_short", "bidirectional"))

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body.pop("version")
        return {"schema": CONFIG_SCHEMA, "version": self.version, **body}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "ModelConfig":
        data = dict(data)
        schema = data.pop("schema", CONFIG_SCHEMA)
        if schema != CONFIG_SCHEMA:
            raise ConfigError(f"{where}: not a {CONFIG_SCHEMA} file (schema={schema!r})")
        version = data.get("version", CONFIG_VERSION)
        if version == 1:
            data = _upgrade_v3(_upgrade(_upgrade_v1(data), _V2_BEHAVIOUR))
        elif version == 2:
            data = _upgrade_v3(_upgrade(data, _V2_BEHAVIOUR))
        elif version == 3:
            data = _upgrade_v3(data)
        elif version != CONFIG_VERSION:
            raise ConfigError(f"{where}: {CONFIG_SCHEMA} version {version!r}, this toolkit "
                              f"reads versions 1 to {CONFIG_VERSION}")
        return _build(cls, data, where)


def _upgrade(data: dict[str, Any], behaviour: dict[str, Any]) -> dict[str, Any]:
    """An older config with the switches added since set to what it did then (its own values kept)."""
    data = {**data, "version": CONFIG_VERSION}
    for key, value in behaviour.items():
        if isinstance(value, dict):
            part = dict(data.get(key, {}))
            for name, old in value.items():
                part.setdefault(name, old)
            data[key] = part
        else:
            data.setdefault(key, value)
    return data


def _upgrade_v3(data: dict[str, Any]) -> dict[str, Any]:
    """A version-3 config with the switches added in version 4 set to what version 3 did: LoSh-M's short pathway
    took the long target's visibility, LoSh-S's its own."""
    data = _upgrade(data, _V3_BEHAVIOUR)
    short_visibility = "short" if data.get("architecture", "mttr") == "sgmg" else "long"
    data["loss"] = {"short_visibility": short_visibility, **data.get("loss", {})}
    return data


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 config with the switches added in version 2 set to what version 1 did."""
    data = _upgrade(data, _V1_BEHAVIOUR)
    if not data.get("use_short_text", True):
        data["inference_short_pathway"] = "none"
    return data


def _check_choice(name: str, value: Any, literal: Any) -> None:
    if value not in get_args(literal):
        raise ConfigError(f"{name} must be one of {list(get_args(literal))}, got {value!r}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Dataclass `cls` from a JSON-like dict: unknown keys are errors, lists become tuples."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown fields {unknown} (known: {sorted(known)})")
    kwargs = {}
    for name, value in data.items():
        kind = hints[name]
        if isinstance(kind, type) and is_dataclass(kind):
            kwargs[name] = _build(kind, value, f"{where}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
        _check_type(f"{where}.{name}", kwargs[name], kind)
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def _check_type(name: str, value: Any, kind: Any) -> None:
    text = str(kind)
    if kind is bool or text == "bool":
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, str)
    elif text.startswith("str | None"):
        ok = value is None or isinstance(value, str)
    elif text.startswith("tuple"):
        ok = isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    else:
        ok = True   # literals are checked by validate(), dataclasses by _build
    if not ok:
        raise ConfigError(f"{name}: {value!r} is not of type {text}")


def with_overrides(config: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    """A copy of `config` with dotted-path overrides, e.g. {"loss.fbc": 0.0, "backbone.weights": "w.pth"}.

    The result is validated as a whole (switches that only make sense together are applied together).
    """
    top: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {}
    for path, value in overrides.items():
        head, _, rest = path.partition(".")
        if not hasattr(config, head):
            raise ConfigError(f"unknown config field {path!r}")
        if rest:
            part = getattr(config, head)
            if not is_dataclass(part) or not hasattr(part, rest):
                raise ConfigError(f"unknown config field {path!r}")
            parts.setdefault(head, {})[rest] = tuple(value) if isinstance(value, list) else value
        else:
            top[head] = value
    variant = parts.get("backbone", {}).get("variant")
    if variant in SWIN_VARIANTS:   # naming a variant sets its dims (unless they are overridden too)
        for key, value in SWIN_VARIANTS[variant].items():
            parts["backbone"].setdefault(key, value)
    data = config.to_dict()
    for head, values in parts.items():
        data[head] = {**data[head], **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}
    data.update(top)
    return ModelConfig.from_dict(data, where=f"{config.name} with overrides")


def parse_assignments(assignments: Sequence[str]) -> dict[str, Any]:
    """`--set` values "dotted.key=value" -> {key: value}; a value is read as JSON (numbers, true/false, lists,
    null, quoted strings), else taken as a string ("backbone.weights=/data/swin.pth")."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {assignment!r}: write KEY=VALUE, e.g. loss.fbc=0.0 or backbone.variant=swin-b")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides[key.strip()] = value
    return overrides


def save_config(config: ModelConfig, path: str | os.PathLike) -> None:
    """Writes the config as JSON atomically."""
    atomic_write_text(path, json.dumps(config.to_dict(), indent=2) + "\n")


def load_config(path: str | os.PathLike) -> ModelConfig:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    return ModelConfig.from_dict(data, where=str(path))


__all__ = [
    "BackboneConfig", "CONFIG_SCHEMA", "CONFIG_VERSION", "ConfigError", "LossConfig", "ModelConfig", "SWIN_VARIANTS",
    "SgmgConfig", "TextConfig", "TransformerConfig", "load_config", "save_config", "with_overrides",
]
