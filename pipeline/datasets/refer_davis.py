"""Reader of the Refer-DAVIS17 raw layout, as its two downloads unpack side by side (the root SgMg and
ReferFormer read):

ROOT/DAVIS/JPEGImages/480p/<seq>/%05d.jpg
ROOT/DAVIS/Annotations_unsupervised/480p/<seq>/%05d.png    palette PNGs, pixel value = object id
ROOT/DAVIS/ImageSets/2017/{train,val}.txt                   one sequence a line
ROOT/davis_text_annotations/Davis17_annot1.txt, Davis17_annot1_full_video.txt,
                            Davis17_annot2.txt, Davis17_annot2_full_video.txt
    one `sequence object_id "expression"` a line; the annot2 files are latin-1

Four expression sets: two annotators, each describing the first frame or the full video. The field scores
each set on val by the DAVIS-2017 unsupervised protocol and averages them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from losh.pipeline.datasets.base import DatasetPlan, DatasetRootError, ExpressionSpec, VideoSpec
from losh.pipeline.datasets.base import Problem as PlanProblem
from losh.schemas.safe_paths import unsafe_reason

EXPRESSION_SETS = {
    "annot1": ("Davis17_annot1.txt", "utf-8"),
    "annot1_full_video": ("Davis17_annot1_full_video.txt", "utf-8"),
    "annot2": ("Davis17_annot2.txt", "latin-1"),
    "annot2_full_video": ("Davis17_annot2_full_video.txt", "latin-1"),
}
# names in the text files that differ from the DAVIS sequence names
NAME_FIXES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale", "motor-bike": "motorbike"}
_LINE = re.compile(r'^(\S+)\s+(\d+)\s+"(.*)"\s*$')


@dataclass(frozen=True)
class Expression:
    expression_set: str         # annot1, annot1_full_video, annot2, annot2_full_video
    sequence: str
    object_id: int
    text: str


@dataclass(frozen=True)
class Problem:
    sequence: str
    reason: str
    expression_set: str | None = None
    line: int | None = None

    def to_dict(self) -> dict:
        return {"sequence": self.sequence, "expression_set": self.expression_set, "line": self.line,
                "reason": self.reason}


@dataclass
class ReferDavisRaw:
    root: Path
    split: str
    sequences: tuple[str, ...]
    expressions: list[Expression]
    problems: list[Problem] = field(default_factory=list)   # renamed sequences are reported here too

    def frames_dir(self, sequence: str) -> Path:
        return self.root / "DAVIS" / "JPEGImages" / "480p" / sequence

    def masks_dir(self, sequence: str) -> Path:
        return self.root / "DAVIS" / "Annotations_unsupervised" / "480p" / sequence

    def of_set(self, expression_set: str) -> list[Expression]:
        return [e for e in self.expressions if e.expression_set == expression_set]


def read_expression_file(path: Path, expression_set: str, encoding: str, problems: list[Problem]) -> list[Expression]:
    expressions = []
    for number, raw in enumerate(_lines(path, encoding, expression_set, problems), start=1):
        if raw is None:
            continue
        if not raw.strip():
            continue
        match = _LINE.match(raw.strip())
        if match is None:
            problems.append(Problem(raw.split()[0] if raw.split() else "", f"malformed line {raw.strip()!r}",
                                    expression_set, number))
            continue
        sequence, object_id, text = match.group(1), int(match.group(2)), match.group(3).strip()
        if sequence in NAME_FIXES:
            problems.append(Problem(sequence, f"sequence name {sequence!r} read as {NAME_FIXES[sequence]!r}",
                                    expression_set, number))
            sequence = NAME_FIXES[sequence]
        if not text:
            problems.append(Problem(sequence, "empty expression", expression_set, number))
            continue
        expressions.append(Expression(expression_set, sequence, object_id, text))
    return expressions


def _lines(path: Path, encoding: str, expression_set: str, problems: list[Problem]) -> list[str | None]:
    """The file's lines; one that is not `encoding` text is a problem (named by file and line) and None."""
    out: list[str | None] = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            out.append(raw.decode(encoding))
        except UnicodeDecodeError as error:
            problems.append(Problem("", f"{path.name} line {number}: not {encoding} text (byte "
                                        f"0x{raw[error.start]:02x} at column {error.start + 1}): skipped",
                                    expression_set, number))
            out.append(None)
    return out


def read_refer_davis(root: Path, split: str = "val") -> ReferDavisRaw:
    """The sequences of `split` (ImageSets/2017/<split>.txt) and their expressions of the four sets."""
    root = Path(root)
    image_set = root / "DAVIS" / "ImageSets" / "2017" / f"{split}.txt"
    texts = root / "davis_text_annotations"
    missing = [str(p.relative_to(root)) for p in [image_set, *(texts / f for f, _ in EXPRESSION_SETS.values())]
               if not p.is_file()]
    if missing:
        raise DatasetRootError(f"{root} is not a Refer-DAVIS17 root: missing {', '.join(missing)}")
    problems: list[Problem] = []
    sequences = []
    for number, line in enumerate(image_set.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        reason = unsafe_reason(name)
        if reason is not None:   # never joined to a path
            problems.append(Problem(name, f"sequence name in {image_set.name} is not a plain folder name ({reason}): "
                                          "skipped", "", number))
            continue
        sequences.append(name)
    sequences = tuple(sequences)
    wanted = set(sequences)
    expressions = []
    for name, (filename, encoding) in EXPRESSION_SETS.items():
        for e in read_expression_file(texts / filename, name, encoding, problems):
            if e.sequence in wanted:
                expressions.append(e)
    return ReferDavisRaw(root, split, sequences, expressions, problems)


def plan_refer_davis(root: Path, split: str = "val") -> DatasetPlan:
    """Every sequence of `split` with its frames and masks; one whole-video sample per expression of each
    of the four sets (`subset` = the set), as the field scores Refer-DAVIS17 with a Refer-YouTube-VOS model.
    A train split is drawn in consecutive windows (for fine-tuning)."""
    raw = read_refer_davis(root, split)
    problems = [PlanProblem(p.sequence, p.reason, details={"expression_set": p.expression_set, "line": p.line})
                for p in raw.problems]
    by_sequence: dict[str, list[Expression]] = {}
    for e in raw.expressions:
        by_sequence.setdefault(e.sequence, []).append(e)
    videos = []
    for sequence in raw.sequences:
        frames = sorted(raw.frames_dir(sequence).glob("*.jpg"))
        if not frames:
            problems.append(PlanProblem(sequence, "no frames (DAVIS/JPEGImages/480p/<sequence>/*.jpg)"))
            continue
        if sequence not in by_sequence:
            problems.append(PlanProblem(sequence, "no expression in any of the four sets"))
            continue
        masks_dir = raw.masks_dir(sequence)
        masks = tuple(str(masks_dir / f"{f.stem}.png") if (masks_dir / f"{f.stem}.png").is_file() else ""
                      for f in frames)
        expressions = tuple(ExpressionSpec(f"{e.expression_set}-{e.object_id}", e.object_id, e.text, subset=e.expression_set)
                            for e in by_sequence[sequence])
        seen: set[str] = set()
        unique = []
        for e in expressions:   # a repeated (set, object) line: the first one is kept
            if e.expression_id in seen:
                problems.append(PlanProblem(sequence, "duplicate expression for this object in this set (kept the first)",
                                            e.instance_id, details={"expression_set": e.subset}))
                continue
            seen.add(e.expression_id)
            unique.append(e)
        videos.append(VideoSpec(sequence, split, "whole_video" if split != "train" else "consecutive", tuple(unique),
                                frame_files=tuple(str(f) for f in frames), frame_names=tuple(f.stem for f in frames),
                                annotation_format="palette_png", annotation_files=masks))
    if not videos:
        raise DatasetRootError(f"{root}: no {split} sequence with frames and expressions")
    kind = "window" if split == "train" else "video"
    counts = {"expressions": sum(len(v.expressions) for v in videos)}
    info = {"expression_sets": list(EXPRESSION_SETS), "davis_split": split,
            "masks": "DAVIS/Annotations_unsupervised/480p"}
    return DatasetPlan("refer-davis", videos, problems, counts, {split: {"kind": kind, "masks": True}}, split, info)
