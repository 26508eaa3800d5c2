"""Readers of the raw layouts of the RVOS data sets, one file each (A2D-Sentences is `pipeline/a2d.py`)."""
