"""Inference: load a run, predict, post-process, tune, ensemble, submit, analyse, export."""
