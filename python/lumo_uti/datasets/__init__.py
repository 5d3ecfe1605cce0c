"""Datasets at scale: a corpus -> token shards, and shards -> training.

    from lumo_uti.datasets import tokenize_dataset, TokenShards
    tokenize_dataset("corpus.jsonl", out="shards/", workers=2)   # or a datasets.Dataset, Parquet
    shards = TokenShards("shards/")                               # len(shards), shards[i] -> int32 IDs

The shards are Megatron-LM indexed datasets (``shard_NNNNNN.bin/.idx``), one
sequence per input document that encoded, in input order, plus
``manifest.json`` and ``errors.jsonl``. docs/datasets.md has the details.
"""

from .documents import DocumentError
from .encoding import EncodeSettings
from .indexed import IndexedFormatError, IndexedShard
from .pipeline import tokenize_dataset
from .shards import TokenShards
from .writer import ShardFolderError, TooManyErrors

__all__ = ["DocumentError", "EncodeSettings", "IndexedFormatError", "IndexedShard", "ShardFolderError",
           "TokenShards", "TooManyErrors", "tokenize_dataset"]
