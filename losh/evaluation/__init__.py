"""Evaluation: frame metrics (MTTR's A2D protocol), video metrics (J, F, J&F; the DAVIS protocol), the
evaluators of windows and of whole videos, saved predictions and the Refer-YouTube-VOS submission."""
