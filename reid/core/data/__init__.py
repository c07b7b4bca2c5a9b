"""Data formats, readers, the synthetic corpus and datasets."""
