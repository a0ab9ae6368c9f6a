# Build step of the wasm guest (scripts/build-wasm-guest): copies CPython's standard library
# for WASI, compiled, out of componentize-py, to be mounted read-only at /python in every
# sandbox. It runs as a throw-away component of its own, so that the copying and compiling
# do not grow the real guest's snapshot (whose size every sandbox pays).
#
# While componentize-py pre-initialises an application, it mounts the standard library at
# /python (`sys.prefix`) and the application's directory read-write: the copy goes to
# `stdlib/` in this file's directory (the build's staging directory). Bytecode is
# unchecked-hash: used without comparing source timestamps, so the read-only mount never
# needs anything recompiled or written.
import compileall
import os
import py_compile
import shutil
import sys

import wit_world

DEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stdlib")
SKIP = ("site-packages", "__pycache__", "test", "tests", "idlelib", "tkinter", "turtledemo",
        "ensurepip", "__phello__")

shutil.rmtree(DEST, ignore_errors=True)
shutil.copytree(sys.prefix, DEST, ignore=shutil.ignore_patterns(*SKIP))
if not compileall.compile_dir(
    DEST, quiet=2, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
):
    raise RuntimeError("compiling the exported standard library failed")


class WitWorld(wit_world.WitWorld):
    """Never instantiated: the component is discarded; only its build has an effect."""

    def configure(self, env):
        pass

    def run(self, code):
        return wit_world.Outcome_Ok()
