"""LoSh-M: LoSh on MTTR (paper 3, 4.2), and its MTTR baseline (`mttr` preset)."""
