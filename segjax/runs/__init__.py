"""Run folders: config.json and run.json, Orbax checkpoints, the metrics log. Read by training
and by inference alike, so below both."""
