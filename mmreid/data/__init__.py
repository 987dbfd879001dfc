"""Data: the dataset layouts and the Arrow builder, synthetic data, decoding and collation, the P x K sampler, training augmentation and caption text."""
