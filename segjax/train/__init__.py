"""Training: the train state and jitted steps, the loop, checkpoints, run folders, k folds."""
