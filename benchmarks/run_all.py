"""Run the five benchmarks of vaeconverge and print one table of their ratios, all measured in this run.

  1. 8 seeds of the digits MLP in one vectorised pass vs 8 sequential naive runs  (seeds_vs_naive.py)
  2. conv32 with diagnostics on vs the naive loop                                 (conv32_vs_naive.py)
  3. vaeconverge vs Pythae 0.1.2's trainer, 784-512-16 MLP                        (pythae_vs_vaeconverge.py)
  4. overhead of the full-gradient diagnostics at their default interval          (diagnostics_overhead.py)
  5. MLP training step GFLOP/s vs this machine's matmul GFLOP/s                   (flops.py)

Every variant runs in its own fresh process (peak memory is that process's maximum resident set size) with
the same torch thread count; only training is timed; a benchmark's variants run round-robin (``--repeats``
rounds) and each keeps its fastest run. Run: ``.venv/bin/python benchmarks/run_all.py``, or
``--quick`` (a few minutes) to check that everything works; ``--only 1,4`` picks benchmarks.
"""

from __future__ import annotations

import conv32_vs_naive
import diagnostics_overhead
import flops
import pythae_vs_vaeconverge
import seeds_vs_naive
from harness import format_results, header, parse_args, settings_of

BENCHMARKS = (seeds_vs_naive, conv32_vs_naive, pythae_vs_vaeconverge, diagnostics_overhead, flops)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], selectable=len(BENCHMARKS))
    print(header(args), flush=True)
    results = []
    for number in args.only:
        module = BENCHMARKS[number - 1]
        print(f"running {module.NAME} ...", flush=True)
        results.append(module.run(settings_of(args)))
    print()
    print(format_results(results))


if __name__ == "__main__":
    main()
