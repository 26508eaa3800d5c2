"""The numbers the LoSh paper (CVPR 2024) reports, beside which a report puts an evaluation's own: only for the
models and data sets the paper has (Swin-T backbones), as fractions, by the metric names of `metrics.json`."""
from __future__ import annotations

# (dataset, model) -> {metric: fraction}; A2D-Sentences test: overall IoU, mean IoU, mAP (Table 1);
# Refer-YouTube-VOS valid (the server's score) and Refer-DAVIS17 val: J&F (Table 2)
PAPER: dict[tuple[str, str], dict[str, float]] = {
    ("a2d", "losh-m"): {"overall_iou": 0.729, "mean_iou": 0.649, "map": 0.478},
    ("a2d", "mttr"): {"overall_iou": 0.702, "mean_iou": 0.618, "map": 0.447},
    ("a2d", "losh-s"): {"overall_iou": 0.793, "mean_iou": 0.716, "map": 0.576},
    ("a2d", "sgmg"): {"overall_iou": 0.780, "mean_iou": 0.704, "map": 0.561},
    ("refer-youtube-vos", "losh-s"): {"jf": 0.637},
    ("refer-youtube-vos", "sgmg"): {"jf": 0.620},
    ("refer-davis", "losh-s"): {"jf": 0.629},
    ("refer-davis", "sgmg"): {"jf": 0.619},
}
WHERE = {"a2d": "A2D-Sentences test", "refer-youtube-vos": "Refer-YouTube-VOS valid (server)",
         "refer-davis": "Refer-DAVIS17 val"}


def paper_numbers(dataset: str | None, model: str | None, backbone: str | None = None) -> dict[str, float]:
    """The paper's numbers for this model on this data set ({} where it has none: another data set, an ablation,
    another backbone)."""
    if backbone not in (None, "swin-t"):
        return {}
    return dict(PAPER.get((str(dataset), str(model)), {}))
