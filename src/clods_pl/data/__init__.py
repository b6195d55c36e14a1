"""Datasets: the on-disk format, the synthetic generator, MGN import, preview, and their helpers."""

from clods_pl.data.format import Dataset, DatasetInfo, Trajectory, read_dataset
from clods_pl.data.writer import write_dataset_info, write_trajectory

__all__ = ["DatasetInfo", "Dataset", "Trajectory", "read_dataset", "write_dataset_info", "write_trajectory"]
