"""`python -m mpidsgd.bench torch`'s reporting, without torch or MPI: repeats
are interleaved round-robin, a method's figure is the median of its runs, and
the ratios in the table are of those medians."""
from mpidsgd.bench.torch_ddp import median_record, round_robin, table


def rec(method, step_ms, ranks=1):
    return {"model": "mlp", "ranks": ranks, "method": method, "steps": 100, "samples": 3200,
            "step_ms": step_ms, "cpu_ms": step_ms / 2, "bytes_per_rank_per_step": 0.0,
            "test_accuracy": 0.5}


def test_every_repeat_runs_each_method_once_in_a_rotated_order():
    order = list(round_robin(["a", "b", "c"], 4))
    rounds = [order[i:i + 3] for i in range(0, 12, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert [r[0] for r in rounds] == ["a", "b", "c", "a"]


def test_the_median_run_is_reported_with_every_run_beside_it():
    odd = median_record([rec("sgd", 3.0), rec("sgd", 1.0), rec("sgd", 9.0)])
    assert odd["step_ms"] == 3.0 and odd["step_ms_runs"] == [3.0, 1.0, 9.0]
    assert odd["cpu_ms"] == 1.5
    assert odd["samples_per_s"] == 32 / 3.0e-3        # 3200 samples over 100 steps of 3 ms
    assert median_record([rec("sgd", 4.0), rec("sgd", 1.0), rec("sgd", 2.0),
                          rec("sgd", 8.0)])["step_ms"] == 3.0


def test_the_table_divides_by_the_builtin_bare_torch_and_ddp_medians():
    rows = [median_record([rec(m, t)]) for m, t in
            (("builtin-sgd", 0.5), ("sgd", 0.6), ("torch-bare", 0.8), ("ddp", 1.2))]
    rows.append(median_record([rec("sgd", 2.0, ranks=2)]))   # no references at P = 2
    lines = table(rows).splitlines()
    sgd = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert sgd[:5] == ["mlp", "1", "sgd", "53333", "0.60"]
    assert sgd[6:10] == ["1.20x", "0.75x", "0.50x", "0.30"]
    assert [c.strip() for c in lines[-1].split("|")[1:-1]][6:9] == ["", "", ""]
