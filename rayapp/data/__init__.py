"""Ray Data ingest: replay shards -> decoded, preprocessed, stacked, split, balanced samples."""

from rayapp.data.index import SPLITS, DatasetIndex
from rayapp.data.pipeline import Ingest, balance_factors, build_ingest, configure_data_context, torch_batches

__all__ = [
    "SPLITS",
    "DatasetIndex",
    "Ingest",
    "balance_factors",
    "build_ingest",
    "configure_data_context",
    "torch_batches",
]
