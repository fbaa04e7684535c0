"""tools/profile_train_step.py's split of a trace's wall time, on events laid out by hand."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tools"))
import profile_train_step  # noqa: E402

MS = 10**9  # picoseconds


def test_concurrency_splits_wall_time_by_ops_running_and_names_the_serial_chain():
    # a alone 0-5 ms, a and b 5-10, b alone 10-15, nothing 15-20, c alone 20-25.
    events = [(0, 10 * MS, "a", "Conv2D"), (5 * MS, 15 * MS, "b", "Relu"),
              (20 * MS, 25 * MS, "c", "MaxPool")]
    by_count, alone = profile_train_step.concurrency(events)
    assert dict(by_count) == pytest.approx({0: 5.0, 1: 15.0, 2: 5.0})
    assert dict(alone) == pytest.approx({"a": 5.0, "b": 5.0, "c": 5.0})
    totals, counts = profile_train_step.op_thread_times(events)
    assert dict(totals) == pytest.approx({"Conv2D": 10.0, "Relu": 10.0, "MaxPool": 5.0})
    assert dict(counts) == {"Conv2D": 1, "Relu": 1, "MaxPool": 1}
