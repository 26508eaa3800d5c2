"""SgMg's own parts (LoSh-S): the multi-scale deformable attention and transformer of Deformable DETR, in pure PyTorch."""
