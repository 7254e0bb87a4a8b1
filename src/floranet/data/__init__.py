"""Data: image decoding, the dataset doctor, splits, input pipelines, datasets."""
