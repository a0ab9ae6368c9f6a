# AgentKernel's wasm guest: CPython (compiled to WASI by componentize-py) running agent
# programs for the wasm backend. Built into a pre-initialised component by
# scripts/build-wasm-guest; the host is backend-wasm/src.
#
# Everything imported at module level is imported at build time and lives in the
# component's snapshot: a new instance starts with it already in memory. The rest of the
# standard library is exported at build time (compiled, by guest/export_stdlib.py) beside
# the component, and the host mounts it read-only at /python, where CPython found it at
# build time: any other stdlib module imports from there on first use.
#
# The snapshot is kept to what agent programs use most, because its size is paid on every
# sandbox: each finished sandbox's memory is reset by copying the snapshot back.
import sys

import program  # shared with the process backend: kernel-core/src/guest/program.py
import wit_world
from componentize_py_types import Err

# Imported into the snapshot: what agent programs use most (and what the guest needs).
PREIMPORTED = """
abc array ast asyncio base64 binascii bisect builtins codecs collections collections.abc
contextlib contextvars copy copyreg csv dataclasses datetime decimal enum errno fnmatch
fractions functools gc hashlib heapq hmac inspect io itertools json json.decoder
json.encoder keyword linecache math numbers operator os os.path pathlib pprint random re
reprlib secrets shlex sqlite3 stat statistics string struct textwrap time traceback types
typing typing_extensions unicodedata uuid warnings weakref zlib _strptime __future__
""".split()

for _name in PREIMPORTED:
    try:
        __import__(_name)
    except ImportError:  # typing_extensions is not stdlib: only if the build machine has it
        pass


# Where the standard library is at build time, and where the host mounts its exported
# copy (guest/export_stdlib.py; backend-wasm/src/sandbox.rs: STDLIB_MOUNT).
STDLIB_MOUNT = "/python"
if sys.prefix != STDLIB_MOUNT:
    raise RuntimeError(f"the standard library is at {sys.prefix}, not {STDLIB_MOUNT}")
# At run time only the standard library is on the path (the build's other directories,
# e.g. the staging directory, do not exist there); the finders look afresh.
sys.path[:] = [STDLIB_MOUNT]
sys.path_importer_cache.clear()


def _asyncio_without_self_pipe():
    """Lets `asyncio.run` work without sockets.

    An event loop wakes itself from other threads and signal handlers through a socket
    pair; WASI has neither threads, signals, nor a socket pair (CPython's fallback makes one
    over TCP, which the sandbox forbids). The loop works without it: no self-pipe at all.
    """
    from asyncio import selector_events

    def make_self_pipe(self):
        self._ssock = self._csock = None

    def close_self_pipe(self):
        self._ssock = self._csock = None

    selector_events.BaseSelectorEventLoop._make_self_pipe = make_self_pipe
    selector_events.BaseSelectorEventLoop._close_self_pipe = close_self_pipe


_asyncio_without_self_pipe()

# Frames of these files are the guest's, not the program's: tracebacks leave them out.
INTERNAL_FILES = (__file__, program.__file__)
TOOLS_DIR = "/tools"  # the generated `tools` package, preopened read-only when there are tools


class _ToolsFinder:
    """Finds the `tools` package at /tools.

    The process backend puts `/` on `sys.path`; here `/` itself is not visible (only the
    preopened directories are), so the import system could not list it: this finder
    answers for the one top-level name instead. Submodules are found normally, through the
    package's `__path__`.
    """

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        import importlib.util
        import os

        init = TOOLS_DIR + "/__init__.py"
        if name != "tools" or not os.path.exists(init):
            return None
        return importlib.util.spec_from_file_location(
            "tools", init, submodule_search_locations=[TOOLS_DIR]
        )


def _transport(name, payload):
    import json

    try:
        return True, json.loads(wit_world.host_call(name, json.dumps(payload)))
    except Err as e:
        return False, {"kind": e.value.kind, "message": e.value.message}


# Built once, in the snapshot: `configure` only installs it.
RUNTIME_MODULE = program.make_runtime_module(_transport)
# `display(obj)` prints its repr here (no matplotlib on WASI, no display channel).
program.install_display(None)


class WitWorld(wit_world.WitWorld):
    """The component's exports (see backend-wasm/guest/wit/agentkernel.wit)."""

    def __init__(self):
        self.globals = program.new_globals()
        self.runs = 0

    def configure(self, env):
        import os
        import random

        os.environ.clear()
        os.environ.update(dict(env))
        random.seed()  # the snapshot's seed was the build's
        sys.modules["_agentkernel"] = RUNTIME_MODULE
        if _ToolsFinder not in sys.meta_path:
            sys.meta_path.append(_ToolsFinder)
        try:
            os.chdir(os.environ.get("PWD", "/tmp"))
        except OSError:  # a PWD the spec set that does not exist here
            os.chdir("/tmp")

    def run(self, code):
        self.runs += 1
        filename = "main.py" if self.runs == 1 else "main-%d.py" % self.runs
        status = program.run_program(code, self.globals, filename, INTERNAL_FILES)
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:  # noqa: BLE001 - a broken user stream must not break the run
                pass
        kind = status["kind"]
        if kind == "ok":
            value = status.get("value")
            if value is not None:
                value = wit_world.ExprValue(value["repr"], value["json"], value["truncated"])
            return wit_world.Outcome_Ok(value)
        if kind == "exited":
            return wit_world.Outcome_Exited(status["code"])
        return wit_world.Outcome_Exception(
            wit_world.ExceptionInfo(status["type"], status["message"], status["traceback"])
        )


# Last step of the build-time snapshot: everything imported so far is permanent. Frozen
# objects are never scanned by the garbage collector, so a new instance's first collection
# does not touch (and copy) every page of the snapshot's heap.
import gc  # noqa: E402

gc.collect()
gc.freeze()
