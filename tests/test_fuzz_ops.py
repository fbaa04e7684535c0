"""The compiled ops under tools/fuzz_ops.py's seeded hostile corpus, each case in a
subprocess: no signal, no hang, and every result equal to the op's reference."""

import os
import subprocess
import sys
import textwrap

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
sys.path.insert(0, TOOLS)
import fuzz_ops  # noqa: E402

CASES = 5000


def test_the_seeded_corpus_passes_every_op():
    result = subprocess.run(
        [sys.executable, os.path.join(TOOLS, "fuzz_ops.py"), f"--cases={CASES}", "--seed=0"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    summary = [line for line in result.stdout.splitlines() if line.startswith(f"{CASES} cases:")]
    assert summary == [f"{CASES} cases: 0 mismatch, 0 error, 0 crash, 0 hang"], result.stdout
    # Every op was reached, and most cases of each were compared with a reference.
    for kind in fuzz_ops.KINDS:
        line = next(line for line in result.stdout.splitlines() if line.split()[:1] == [kind])
        matched = int(line.split()[1]) if line.split()[2] == "match," else 0
        assert matched >= CASES // len(fuzz_ops.KINDS) // 5, line


FAKE_WORKER = textwrap.dedent("""
    import os, signal, sys, time
    args = dict(a[2:].split("=") for a in sys.argv[1:] if "=" in a)
    first, cases = int(args["first"]), int(args["cases"])
    for i in range(first, first + cases):
        print(f"begin {i} lrn", flush=True)
        if i == 3:
            os.kill(os.getpid(), signal.SIGSEGV)
        if i == 6:
            time.sleep(60)
        print(f"end {i} lrn " + ("mismatch: made up" if i == 8 else "match"), flush=True)
""")


def test_the_driver_reports_a_crash_a_hang_and_a_mismatch_and_goes_on(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(FAKE_WORKER)
    counts, failures = fuzz_ops.fuzz(0, 0, 10, timeout_s=3,
                                     worker=(sys.executable, str(worker)))
    assert failures == ["case 3 (lrn): crash: the process died with signal 11",
                        "case 6 (lrn): hang: no answer in 3 s",
                        "case 8 (lrn): mismatch: made up"]
    assert counts["lrn"]["match"] == 7


@pytest.mark.parametrize("values,expected", [
    (([1.0, float("nan")], [1.0, float("nan")]), 0.0),
    (([1.0, float("inf")], [1.0, float("inf")]), 0.0),
    (([1.0, float("inf")], [1.0, -float("inf")]), None),
    (([1.0, float("nan")], [1.0, 2.0]), None),
    (([1.5, 4.0], [1.0, 4.0]), 0.125),
])
def test_errors_count_nans_and_infinities_where_they_stand(values, expected):
    assert fuzz_ops.finite_error(*values, relative=True) == expected
