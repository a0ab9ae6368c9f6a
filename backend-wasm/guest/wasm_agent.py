# AgentKernel's wasm guest: CPython (compiled to WASI by componentize-py) running agent
# programs for the wasm backend. Built into a pre-initialised component by
# scripts/build-wasm-guest; the host is backend-wasm/src.
#
# Everything imported at module level is imported at build time and lives in the
# component's snapshot: a new instance starts with it already in memory. Only the modules
# imported here exist inside the sandbox (there is no stdlib on disk at run time), so the
# list is generous.
import sys

import program  # shared with the process backend: kernel-core/src/guest/program.py
import wit_world
from componentize_py_types import Err

# The standard library a sandboxed program can import (pure Python and built-in modules).
STDLIB = """
abc argparse array ast asyncio base64 binascii bisect builtins calendar cmath codecs
collections collections.abc colorsys contextlib contextvars copy copyreg csv dataclasses
datetime decimal difflib enum errno fnmatch fractions functools gc getopt glob graphlib
gzip hashlib heapq hmac html html.parser html.entities http http.client http.cookies
importlib importlib.abc importlib.machinery importlib.metadata importlib.resources
importlib.util inspect io ipaddress itertools json keyword linecache locale logging
lzma marshal math mimetypes numbers operator os os.path pathlib pickle pkgutil platform
pprint queue quopri random re reprlib sched secrets shlex shutil signal sqlite3 stat
statistics string stringprep struct sys tarfile tempfile textwrap threading time timeit
token tokenize tomllib traceback types typing typing_extensions unicodedata urllib
urllib.parse uuid warnings weakref xml xml.dom xml.dom.minidom xml.etree
xml.etree.ElementTree zipfile zlib zoneinfo __future__ bz2 email email.message
email.utils json.decoder json.encoder concurrent concurrent.futures _strptime
_markupbase email.mime email.mime.text email.parser email.policy email.header
email.charset email.encoders email.feedparser email.generator email.headerregistry
email.quoprimime email.base64mime email._policybase email._encoded_words
email._parseaddr email._header_value_parser email.iterators email.contentmanager
xml.sax xml.sax.saxutils xml.parsers.expat xml.etree.ElementPath cmath opcode dis
asyncio.queues asyncio.subprocess asyncio.taskgroups asyncio.timeouts
""".split()


def _all_codecs():
    """Every codec in `encodings`: codecs are imported lazily by name, so import them all."""
    import encodings
    import pkgutil

    return ["encodings." + m.name for m in pkgutil.iter_modules(encodings.__path__)]


AVAILABLE = []
for _name in STDLIB + _all_codecs():
    try:
        __import__(_name)
        AVAILABLE.append(_name)
    except ImportError:
        pass


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
            return wit_world.Outcome_Ok()
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
