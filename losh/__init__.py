"""LoSh (CVPR 2024) for referring video object segmentation: models, training, evaluation and inference.

    losh/models/       LoSh-M (on MTTR), LoSh-S (on SgMg), the parts they share, the registry
    losh/data/         the prepared shards as PyTorch data
    losh/training/     the training loop, optimiser, EMA, checkpoints, devices
    losh/evaluation/   metrics and evaluators (A2D protocol, J&F, the Refer-YouTube-VOS submission)
    losh/inference/    whole-video inference and `losh predict`

docs/architecture.md is the map.
"""
