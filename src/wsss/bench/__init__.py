"""Benchmarks that ship with the package: ``wsss bed`` (:mod:`wsss.bench.bed`), a resumable,
parallel, shardable grid of ``wsss run`` cells summarised into seed 000's tables."""

from wsss.bench.bed import Bed, Cell, build_tables, load_bed_config, run_bed

__all__ = ["Bed", "Cell", "build_tables", "load_bed_config", "run_bed"]
