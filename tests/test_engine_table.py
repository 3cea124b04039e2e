"""The engines table: the same federation on several engines, with the largest difference from in process."""

import pandas as pd
from test_scorecard import rows

from benchmark.reporting.engines import engine_table


def test_engines_side_by_side_show_the_largest_difference_from_in_process():
    base = rows("plain_lora", [1.0, 0.5])
    flower = [r | {"engine": "flower", "engine_runtime": "simulation", "utility": r["utility"] + 1e-4, "sim_s": 30.0}
              for r in base]
    table = engine_table(pd.DataFrame([r | {"engine": "inproc", "sim_s": 10.0} for r in base] + flower))
    got = {r["metric"]: r for r in table.to_dict("records")}
    assert set(table.columns) >= {"inproc", "flower (simulation)", "vs in process"}
    assert got["utility"]["vs in process"] == "max |Δ| 0.0001" and got["rouge1"]["vs in process"] == "max |Δ| 0"
    assert got["sim_s"]["vs in process"] == "x 3.00 (simulation)"
    assert engine_table(pd.DataFrame(base)).empty  # one engine: nothing to compare
