"""Genomic data: records, datasets, readers for the formats genomics users have, the generator."""

from common.data.dataset import DataError, GenomicDataset, Record, collate

__all__ = ["DataError", "GenomicDataset", "Record", "collate"]
