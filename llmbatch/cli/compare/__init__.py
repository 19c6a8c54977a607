"""``llmbatch compare``: targets × clients under load profiles, swept to saturation.

- ``targets``: provider profiles and ``--target NAME=URL`` specs, × clients (Series);
- ``profiles``: closed loop (concurrency) and open loop (constant / Poisson rate) ladders;
- ``runner``: one step (a run directory), its requests as Samples, its stop conditions;
- ``measure``: warm-up/cool-down windows and vLLM-named figures;
- ``sweep``: the ladders, repeats and spread, saturation and knees;
- ``results``: compare.json (vLLM bench field names), compare.csv, terminal tables;
- ``report_html`` (+ ``svg``): compare.html, self-contained; ``plot``: compare.png.
"""

from llmbatch.cli.compare.files import PROMPTS_FILE, limit_prompts, make_compare_dir

__all__ = ["PROMPTS_FILE", "limit_prompts", "make_compare_dir"]
