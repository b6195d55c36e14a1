"""Orchestration: the clods-pl CLI, experiment configs, run directory and manifest, loggers, SLURM."""
