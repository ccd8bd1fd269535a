"""Data: find, pair, decode and cache the files; split them; the synthetic demo; augmentations."""
