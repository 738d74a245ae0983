"""`sparge-diffusers sweep`: quality versus speed over prompts × seeds × a grid of sparse attention configs.

For every prompt and seed the dense render is made once, then every sparse config of the grid (the product of the
``--topk`` / ``--cdf-threshold`` values, ``--sim-threshold``, ``--pv-threshold``, ``--dense-steps``, ``--reorder`` and
``--precision`` lists). Each render is one CSV row: wall time, speed-up over the dense render, measured sparsity,
fidelity to the dense render (PSNR, SSIM, LPIPS where available) and alignment to the prompt (CLIPScore, CLIP-T, VQA
score, for the metric models given). The out folder then holds:

    results.csv             one row per render (rewritten atomically after every row)
    quality_vs_speed.png    each quality metric against the speed-up, one point per config (mean over prompts)
    report.md               the settings, a per-config table and the plot
    sweep.json              the model and call settings; a rerun with other settings is refused
    dense/*.npz             the dense frames, so a resumed sweep can score sparse rows without re-rendering

Resuming: rerun the same command; rows already in the CSV are skipped (new grid values or prompts are added).

Several GPUs: launch with ``torchrun --nproc-per-node N`` or ``accelerate launch``; each rank (``RANK`` /
``WORLD_SIZE`` / ``LOCAL_RANK``) renders its share of the (prompt, seed) pairs on ``cuda:LOCAL_RANK`` into
``shards/results.rank<r>-of-<n>.csv``, and rank 0 waits for the other ranks' done-markers, merges the shards into
``results.csv`` and writes the plot and report. ``--merge-only`` redoes that merge (e.g. after a rank failed).

One render over several GPUs instead: ``--context-parallel ulysses`` under torchrun splits every attention sequence
over the ranks (`sparge_diffusers.launch`); all ranks render every row together, rank 0 writes the files, and
``sweep.json`` records the world size (a folder is resumed only with the same one).

Modules: `grid` (configs and labels, each rank's share), `rows` (the results CSV), `runner` (rendering and
resuming), `report` (merge, summary, plot, report) and `command` (the CLI sub-command).
"""

from __future__ import annotations

from .command import add_parser, read_prompts, run
from .grid import config_label, expand_grid, rank_info, split_work
from .report import config_styles, finish, plot_quality_vs_speed, quality_figure, short_labels, summarize, write_report
from .rows import (COLUMNS, CONFIG_COLUMNS, DENSE_LABEL, META, PLOT, REPORT, RESULTS, merge_rows, read_rows, row_key,
                   write_rows)
from .runner import SweepPaths, run_sweep, sweep_meta

__all__ = ["COLUMNS", "CONFIG_COLUMNS", "DENSE_LABEL", "META", "PLOT", "REPORT", "RESULTS", "SweepPaths", "add_parser",
           "config_label", "config_styles", "expand_grid", "finish", "merge_rows", "plot_quality_vs_speed",
           "quality_figure", "rank_info", "read_prompts", "read_rows", "row_key", "run", "run_sweep", "short_labels",
           "split_work", "summarize", "sweep_meta", "write_report", "write_rows"]
