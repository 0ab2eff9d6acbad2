"""Tools that make the lake: the synthetic dataset generator (and, in later issues, the archiver,
the Arrow table writer and maintenance). ``lake`` may import ``lambdasource``; never the reverse."""

from .generator import CLICKSTREAM_SCHEMA, generate_clickstream, iter_clickstream

__all__ = ["CLICKSTREAM_SCHEMA", "generate_clickstream", "iter_clickstream"]
