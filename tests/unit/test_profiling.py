"""The benchmarks' bytecode counter (server/profiling.py): exact, and only between its two
signals. Run in a child process: it traces every frame of the process it is installed in."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import os, signal, sys
    from gwserver.server.profiling import BytecodeCounter

    def work(n):
        total = 0
        for i in range(n):
            total += i
        return total

    BytecodeCounter(sys.argv[1]).install()
    work(500)                                   # before the first signal: not counted
    os.kill(os.getpid(), signal.SIGUSR2)
    work(int(sys.argv[2]))
    os.kill(os.getpid(), signal.SIGUSR2)
    work(1000)                                  # after the second: not counted either
""")


def counted(tmp_path, turns):
    out = tmp_path / str(turns)
    out.mkdir()
    subprocess.run([sys.executable, "-c", CHILD, str(out), str(turns)], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    [written] = out.glob("bytecodes-*.json")
    counts = json.loads(written.read_text())
    return sum(count for key, count in counts.items() if key.endswith(":work"))


def test_bytecodes_are_counted_per_function_between_the_two_signals(tmp_path):
    hundred, two_hundred, three_hundred = (counted(tmp_path, n) for n in (100, 200, 300))
    per_turn = (two_hundred - hundred) / 100
    assert per_turn > 0 and three_hundred - two_hundred == two_hundred - hundred   # exact
    # What is not a loop turn is the one call's entry and exit: the 500 turns before the
    # count and the 1000 after it are not in.
    assert 0 < hundred - 100 * per_turn < 5 * per_turn, (hundred, per_turn)
