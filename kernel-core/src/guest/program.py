# AgentKernel: how a guest runs one program and reports its end, shared by every backend
# that runs real CPython (process, wasm). The process agent is this file followed by
# agent.py; the wasm guest imports it as the module `program`.
#
# Nothing here talks to the host: `make_runtime_module` takes the transport as a function.
import sys

# Host error kinds (ToolErrorKind in snake case) and the exceptions programs see.
_TOOL_ERRORS = {
    "not_found": LookupError,
    "invalid_arguments": ValueError,
    "denied": PermissionError,
    "timeout": TimeoutError,
}


def make_runtime_module(transport):
    """The `_agentkernel` module: how code in the sandbox calls host tools.

    `transport(name, payload)` sends one call to the host and answers `(True, value)` or
    `(False, {"kind": ..., "message": ...})`.
    """
    import types

    mod = types.ModuleType("_agentkernel", "AgentKernel's bridge from the sandbox to host tools.")

    class ToolError(Exception):
        """A tool ran on the host and failed; the message is the tool's."""

    class ToolLimitError(ToolError):
        """A tool call broke a host-side limit: argument or result size, or the call budget."""

    # Shown as `tools.ToolError` in tracebacks (the `tools` package re-exports them).
    for cls in (ToolError, ToolLimitError):
        cls.__module__ = "tools"
        cls.__qualname__ = cls.__name__

    errors = dict(_TOOL_ERRORS, failed=ToolError, limit_exceeded=ToolLimitError)

    def call_tool(name, args=None, /, **kwargs):
        """Call host tool `name` with a dict of arguments (or keyword arguments); returns its JSON result."""
        if not isinstance(name, str):
            raise TypeError("tool name must be a str")
        payload = dict(args or {})
        payload.update(kwargs)
        ok, value = transport(name, payload)
        if ok:
            return value
        err = value or {}
        raise errors.get(err.get("kind"), ToolError)(err.get("message", "tool failed"))

    mod.ToolError = ToolError
    mod.ToolLimitError = ToolLimitError
    mod.call_tool = call_tool
    return mod


def user_traceback(exc, internal_files):
    """The traceback of `exc` without the guest's own frames (files in `internal_files`)."""
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in internal_files:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def run_code(code, user_globals, filename):
    """Compiles and runs `code` in `user_globals`; top-level `await` runs in a fresh loop."""
    import ast
    import linecache

    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    compiled = compile(code, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    if compiled.co_flags & 0x80:  # CO_COROUTINE: the program uses top-level await
        import asyncio

        asyncio.run(eval(compiled, user_globals))
    else:
        exec(compiled, user_globals)


def run_program(code, user_globals, filename, internal_files):
    """Runs a program and answers how it ended: {"kind": "ok" | "exited" | "exception", ...}."""
    try:
        run_code(code, user_globals, filename)
    except SystemExit as e:
        code = e.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        # What the exit status of `python3` itself would be (`sys.exit(-1)` is 255).
        return {"kind": "exited", "code": code & 0xFF}
    except BaseException as e:  # noqa: BLE001 - everything the program raises is reported
        tb = user_traceback(e, internal_files)
        # On stderr too, as a terminal shows it (best effort: the stream may be what failed).
        try:
            sys.stderr.write(tb)
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
        return {
            "kind": "exception",
            "type": type(e).__name__,
            "message": str(e),
            "traceback": tb,
        }
    return {"kind": "ok"}


def new_globals():
    """A fresh `__main__` namespace for a session."""
    return {"__name__": "__main__", "__builtins__": __builtins__, "__doc__": None}
