"""The comparison in one command: DiffDFKD against its ablations and the baselines, over seeds.

Every row is data (``bench.rows``): a name and config overrides on the world's shipped config
(``configs/digits.yaml``, the file ``diffdfkd run`` uses). Every row and seed runs the CLI's own code path (``run_experiment``:
synthesize through the one source interface and writer, KD with the one trainer, evaluate once on the
PRIVATE test split), with the same synthetic-image budget per class and the same KD recipe; only the
"from scratch" row swaps KD for cross-entropy without a teacher (``distill.kd=false``). Reported
accuracies are the final epoch's; nothing is selected on the test split.

``run_bench`` (``bench.run``) writes ``results.json``, ``results.md``, ``accuracy.png`` (bars with the std over seeds)
and ``grids/<row>.png`` (seed 0's images, one row per class) into ``out``, and keeps every run's folder
under ``out/runs/<row>/seed<k>``: rerunning skips finished runs and resumes unfinished ones. Means,
standard deviations and differences with their standard errors are ``bench.statistics``; the files are
``bench.render``. Goals and world-specific notes live with the benchmark scripts (``benchmarks/``).
"""

from diffdfkd.bench.render import (
    accuracy_chart,
    comparison_lines,
    markdown,
    write_grids,
    write_outputs,
)
from diffdfkd.bench.rows import (
    ABLATION,
    BASELINE,
    FULL_BUDGET,
    LEGACY_ROW_NAMES,
    NO_ADV,
    OURS,
    QUICK_BUDGET,
    QUICK_ROWS,
    ROW_NAMES_VERSION,
    ROWS,
    UPPER_BOUND,
    WORLD_BUDGETS,
    WORLD_CONFIGS,
    Row,
    bench_budget,
    current_row_names,
    overrides_hold,
    read_results,
    row_config,
    select_rows,
)
from diffdfkd.bench.run import (
    machine,
    run_bench,
    run_record,
    run_row,
    synthetic_measures,
    synthetic_stats,
    torch_threads,
)
from diffdfkd.bench.statistics import (
    aggregate,
    comparison,
    compute_seconds,
    mean_difference,
)

__all__ = [
    "ABLATION",
    "BASELINE",
    "FULL_BUDGET",
    "LEGACY_ROW_NAMES",
    "NO_ADV",
    "OURS",
    "QUICK_BUDGET",
    "QUICK_ROWS",
    "ROWS",
    "ROW_NAMES_VERSION",
    "Row",
    "UPPER_BOUND",
    "WORLD_BUDGETS",
    "WORLD_CONFIGS",
    "accuracy_chart",
    "aggregate",
    "bench_budget",
    "comparison",
    "comparison_lines",
    "compute_seconds",
    "current_row_names",
    "machine",
    "markdown",
    "mean_difference",
    "overrides_hold",
    "read_results",
    "row_config",
    "run_bench",
    "run_record",
    "run_row",
    "select_rows",
    "synthetic_measures",
    "synthetic_stats",
    "torch_threads",
    "write_grids",
    "write_outputs",
]
