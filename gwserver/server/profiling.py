"""Opt-in measurements of one worker, for the benchmarks under scripts/ (never on otherwise).

- ``GWSERVER_PROFILE=<dir>``: the worker runs under cProfile and dumps
  ``worker-<pid>.prof`` there when it exits (scripts/bench --profile).
- ``GWSERVER_COUNT_BYTECODES=<dir>``: the worker counts the bytecodes each Python function
  executes, between two SIGUSR2 (the first starts the count, the second writes
  ``bytecodes-<pid>.json``: {"file:line:function": count}). Bytecodes are not all the same
  price, but the count is exact and the host's noise cannot move it: it shows where a
  request's Python work is, function by function (scripts/bench-instructions --bytecodes).
  Every frame is traced, so the worker runs many times slower meanwhile.

One at a time: with both set, the worker runs under cProfile only.
"""
import cProfile
import json
import os
import signal
import sys
from collections import Counter


def run_measured(serve):
    """``serve()``, under the measurement the environment asks for, if any."""
    profile_dir = os.environ.get("GWSERVER_PROFILE")
    count_dir = os.environ.get("GWSERVER_COUNT_BYTECODES")
    if profile_dir:
        profiler = cProfile.Profile()
        try:
            return profiler.runcall(serve)
        finally:
            profiler.dump_stats(os.path.join(profile_dir, f"worker-{os.getpid()}.prof"))
    if count_dir:
        BytecodeCounter(count_dir).install()
    return serve()


class BytecodeCounter:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.counts = Counter()
        self.counting = False
        self.tracers = {}           # "file:line:function" -> its frames' tracer

    def install(self):
        signal.signal(signal.SIGUSR2, self.toggle)
        sys.settrace(self.on_call)      # greenlets of this thread share it

    def toggle(self, *_):
        if not self.counting:
            self.counts.clear()
            self.counting = True
            return
        self.counting = False
        path = os.path.join(self.out_dir, f"bytecodes-{os.getpid()}.json")
        with open(path + ".part", "w") as out:
            json.dump(self.counts, out)
        os.rename(path + ".part", path)

    def on_call(self, frame, event, arg):
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        code = frame.f_code
        key = f"{code.co_filename.rsplit('/', 2)[-1]}:{code.co_firstlineno}:{code.co_name}"
        tracer = self.tracers.get(key)
        if tracer is None:
            tracer = self.tracers[key] = self.frame_tracer(key)
        return tracer

    def frame_tracer(self, key):
        counts = self.counts

        def on_event(frame, event, arg):
            if event == "opcode" and self.counting:
                counts[key] += 1
            return on_event
        return on_event
