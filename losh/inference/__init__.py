"""Inference: whole-video inference (one query per expression, paper 3.8) and `losh predict` on a user's video."""
