"""``wsss bed CONFIG``: the benchmark bed of seed 000 — CAM methods compared under one set of
conditions (the same dataset, the same saliency maps, a swept τ, several seeds), summarised as
tables of mean ± standard error over seeds (seed 000's Table 1: CAM method × saliency source).

The bed is a grid of ordinary ``wsss run`` cells, one per (method, seed), each in its own folder
over ONE shared dataset; every saliency source is evaluated inside each cell (the pipeline sweeps
τ per source). Because a cell is exactly the pipeline users run, the bed

* resumes: a finished cell (its ``run.json`` holds results made with the same config) is skipped
  without starting the pipeline, a half-finished one resumes stage by stage inside the pipeline;
* runs cells in parallel processes (``--jobs N``, each with ``cores // N`` torch threads; the
  core budget is the CPU affinity, capped by ``OMP_NUM_THREADS`` when set), or as one SLURM job
  each (``--executor slurm``, executors/slurm.py), retrying a failed cell (``--retries N``);
* splits across machines: ``--shard i/N`` runs the cells whose index is ≡ i mod N (plus the
  ``cam`` cells its oc-cse / p-oc / p-noc cells need, which are deterministic, so duplicates are
  identical); copy the ``cells/`` folders together and run ``--merge`` to collect them.

Bed config (YAML)::

    out: runs/bed
    base: demo                  # built-in run config name or YAML path; every cell starts from it
    data: {kind: synthetic, synth: {preset: demo}}   # ONE shared dataset, generated once into <out>/data
    methods:                    # rows of the tables: name → {method, train, infer, cams, oc, set}
      cam: {method: cam}
      puzzle: {method: puzzle, train: {epochs: 4}}
      eps: {method: eps, train: {saliency: good}}
      mine: {cams: /path/to/cams}     # user-submitted CAMs: no training
    saliency: [none, good, poor, spectral-residual]   # columns: sources (built ones need `build:` below)
    build_saliency: {spectral-residual: {source: spectral-residual}}  # the run config's `saliency:` section
    tau: best                   # or a number, or {method: number|best}
    refine: [crf]               # optional: also score each source's labels after these steps
    seeds: [0, 1, 2]
    seg: null                   # optional: the run config's seg section, passed to every cell
    set: ["cam.train.epochs=1"] # extra --set overrides for every cell
    slurm: {partition: gpu, gpus: 1, time: 120}   # only for --executor slurm (executors/slurm.py)

Keys in detail:

* ``seg``: null runs no segmentation stage in the cells, even when the base config has one; a
  mapping is merged over the base's ``seg`` section (``--set seg.labels=good`` keeps the base's
  recipe) and adds a "seg" row per (loss, split) and a method × loss table per split.

* ``data`` is merged over the base config's ``data``. With ``synth`` the dataset is generated once
  into ``data.root`` (default ``<out>/data``) with ``synth.seed`` (default 0): the cells' seeds vary
  training, not the data. Giving ``root`` without ``synth`` uses an existing dataset.
* a ``methods`` entry: ``method`` (default: the entry's name) must be a registered CAM method
  unless ``cams`` is given; ``train`` / ``infer`` merge over the base's ``cam.train`` /
  ``cam.infer``; ``cams`` is a CAM folder in any supported format (the pipeline's ``cam.cams``: no
  training) — a ``{seed}`` in it gives one folder per seed, otherwise the method has a single
  cell at the first seed, since nothing in it depends on the seed; ``oc`` names the method whose
  trained ``cam/`` classifier the methods that need one (oc-cse, p-oc, p-noc) get as
  ``cam.train.oc`` at the same seed (default: the method named ``cam``); ``set`` holds
  overrides for this method's cells only.
* ``saliency``: ``none``, a folder under the dataset's ``saliency/``, or a source of
  ``build_saliency`` (or of the base's ``saliency:`` section); only the listed sources are built.
* ``tau``: ``best`` sweeps the base's ``pseudo.taus`` on the sweep split and keeps each source's
  best τ; a number fixes τ.
* ``refine``: refinement steps (the run config's ``refine.steps``; ``crf`` = the label CRF of
  docs/methods.md §3) applied to every source's pseudo labels; each adds a column ``<source>+<step>``.
* ``wsss bed CONFIG --set key=value``: a key of the bed config (``seeds=[0]``, ``out=…``) changes
  the bed; any other key (``cam.train.epochs=1``, ``pseudo.taus=[0.1,0.2]``) is appended to
  ``set``, i.e. passed to every cell.

Layout of ``out``::

    data/                           the shared dataset (when generated)
    cells/<method>/seed<k>/         a `wsss run` folder, plus cell.yaml (its full run config) and bed.log
    slurm/<method>/seed<k>/         --executor slurm: the cell's submitit job files and logs
    bed.json                        the resolved bed config
    results.csv / .json / .parquet  tidy rows: one per (method, seed, saliency, split[, loss])
    tables.md / tables.json         Table 1 per eval split, τ per seed, IA-mIoU S/M/L, segmentation
    run.json                        (run.shard<i>of<N>.json for a shard): each cell's status
                                    (finished, failed, …), attempts and the error of each failed one

Numbers are deterministic given the seeds for a fixed number of torch threads per cell (the
pipeline is); a different ``--jobs`` changes the threads per cell and may change the last digits.

Modules: ``grid`` (config, cells, resume state, shards), ``executors/`` (``base``: the loop,
retries and records every executor shares; ``local``, ``slurm``: one file each), ``tables``
(rows, tables, their files) and ``run`` (:func:`run_bed`).
"""

from wsss.bench.bed.grid import BED_DEFAULTS, METHOD_KEYS, Bed, Cell, load_bed_config
from wsss.bench.bed.run import run_bed
from wsss.bench.bed.tables import COLUMNS, SCORES, build_tables, tables_markdown

__all__ = [
    "BED_DEFAULTS",
    "COLUMNS",
    "METHOD_KEYS",
    "SCORES",
    "Bed",
    "Cell",
    "build_tables",
    "load_bed_config",
    "run_bed",
    "tables_markdown",
]
