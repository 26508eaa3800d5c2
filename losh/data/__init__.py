"""The prepared shards as PyTorch data: samples and clips, augmentation, collation, batches of one size."""
