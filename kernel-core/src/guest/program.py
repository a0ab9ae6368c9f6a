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


# The largest `repr` and JSON text of a last expression's value sent to the host
# (ExprValue::MAX_REPR_BYTES and MAX_JSON_BYTES there, which the host enforces again).
MAX_VALUE_BYTES = 64 << 10
CO_COROUTINE = 0x80  # the program uses top-level `await`


def run_code(code, user_globals, filename):
    """Compiles and runs `code` in `user_globals`; top-level `await` runs in a fresh loop.

    Answers the value of the program's last top-level statement when that is an expression
    statement, else None. As in Jupyter, the last expression is split off and evaluated on
    its own (compiled in 'eval' mode from the same parse, so its line numbers and the
    traceback of an exception in it are those of the program).
    """
    import ast
    import linecache

    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    # The built-in compile (not ast.parse): a syntax error's traceback has no frame of ours.
    tree = compile(code, filename, "exec", flags=flags | ast.PyCF_ONLY_AST, dont_inherit=True)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    body = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
    tail = None if last is None else compile(last, filename, "eval", flags=flags, dont_inherit=True)
    if (body.co_flags | (0 if tail is None else tail.co_flags)) & CO_COROUTINE:
        import asyncio

        async def body_then_tail():
            # One event loop for both: the last expression may await what the body started.
            ran = eval(body, user_globals)
            if body.co_flags & CO_COROUTINE:
                await ran
            if tail is None:
                return None
            value = eval(tail, user_globals)
            if tail.co_flags & CO_COROUTINE:
                value = await value
            return value

        return asyncio.run(body_then_tail())
    exec(body, user_globals)
    return None if tail is None else eval(tail, user_globals)


def _json_plain(value):
    """Whether `value` is JSON that readers keep exactly: dicts, lists, tuples, str, int
    (within 64 bits), float, bool and None, nested at most 100 deep, small enough to fit
    MAX_VALUE_BYTES (a bounded walk, whatever the value's size)."""
    budget = MAX_VALUE_BYTES // 2  # every item takes at least 2 bytes of JSON text
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        budget -= 1
        if budget < 0 or depth > 100:
            return False
        if v is None or isinstance(v, (str, bool, float)):
            continue
        if isinstance(v, int):
            if not -(1 << 63) <= v < (1 << 64):
                return False
            continue
        if isinstance(v, (list, tuple)):
            if len(v) > budget:
                return False
            stack.extend((x, depth + 1) for x in v)
            continue
        if isinstance(v, dict):
            if len(v) > budget:
                return False
            for k, x in v.items():
                if not (k is None or isinstance(k, (str, int, float))):
                    return False
                stack.append((x, depth + 1))
            continue
        return False
    return True


def describe_value(value):
    """The report of a last expression's value sent to the host: {"repr", "json",
    "truncated"}. `repr(value)` runs here, as part of the program: what it raises is the
    program's exception. `json` is the JSON text where the value is plain JSON, else None."""
    text = repr(value)
    # Lone surrogates (a custom __repr__ can return them) become escapes: the frame stays UTF-8.
    data = text.encode("utf-8", "backslashreplace")
    truncated = len(data) > MAX_VALUE_BYTES
    if truncated:
        data = data[:MAX_VALUE_BYTES]
    json_text = None
    try:
        if _json_plain(value):
            import json

            json_text = json.dumps(value, allow_nan=False)
            if len(json_text) > MAX_VALUE_BYTES:
                json_text = None
    except Exception:  # noqa: BLE001 - not JSON after all (a cycle, a NaN, a huge key)
        json_text = None
    # `ignore`: a character the cut split in two is dropped.
    return {"repr": data.decode("utf-8", "ignore"), "json": json_text, "truncated": truncated}


# Displays (DisplayData in kernel-core/src/exec.rs): what a notebook shows besides output.
# `install_display(send)` sets them up; `send(mime, data)` takes one to the host.
_DISPLAY = {"send": None}
# The matplotlib backend of sandboxes: Agg's canvas, and a `show()` that sends the figures.
_MPL_BACKEND = "_agentkernel_display"


# What one display may carry (the host's caps, DisplayData::MAX_PNG_BYTES and
# MAX_TEXT_BYTES): larger ones are replaced here, so a frame never passes the host's cap.
_MAX_PNG_BASE64 = (512 << 10) // 3 * 4 + 4
_MAX_TEXT = 64 << 10


def _send(mime, data):
    send = _DISPLAY["send"]
    if send is None:
        return
    if mime == "image/png" and len(data) > _MAX_PNG_BASE64:
        mime = "text/plain"
        data = ("[an image over agentkernel's display cap of 512 KiB was dropped: "
                "save it to a file in the workspace instead]")
    elif mime == "text/plain" and len(data) > _MAX_TEXT // 4:
        data = data.encode("utf-8", "replace")[:_MAX_TEXT].decode("utf-8", "ignore")
    send(mime, data)


def _figure_png(fig):
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _show_figures(*args, **kwargs):
    """matplotlib's `show()` here: every open figure goes to the host as PNG, then closes."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None or _DISPLAY["send"] is None:
        return
    for num in plt.get_fignums():
        _send("image/png", _figure_png(plt.figure(num)))
    plt.close("all")


def display(*objs):
    """Shows objects as a notebook does: a matplotlib figure (or anything with
    `_repr_png_`) as an image, anything else as its repr."""
    import base64

    for obj in objs:
        png = None
        if hasattr(obj, "savefig") and hasattr(obj, "canvas"):
            png = _figure_png(obj)
        elif hasattr(obj, "_repr_png_"):
            data = obj._repr_png_()
            if isinstance(data, (bytes, bytearray)):
                png = base64.b64encode(bytes(data)).decode("ascii")
        if _DISPLAY["send"] is None:
            print(repr(obj))
        elif png is not None:
            _send("image/png", png)
        else:
            _send("text/plain", repr(obj))


def install_display(send):
    """Makes `display` a builtin (as IPython does) and matplotlib's default backend one
    whose `show()` sends figures through `send(mime, data)`; figures still open when a
    program ends are sent too (`run_program`)."""
    import builtins
    import importlib.util

    _DISPLAY["send"] = send
    builtins.display = display

    class Backend:
        """Imports the backend module when matplotlib asks for it: Agg's canvas, our show."""

        @staticmethod
        def find_spec(name, path=None, target=None):
            if name != _MPL_BACKEND:
                return None
            return importlib.util.spec_from_loader(name, Backend)

        @staticmethod
        def create_module(spec):
            return None

        @staticmethod
        def exec_module(module):
            from matplotlib.backend_bases import FigureManagerBase
            from matplotlib.backends.backend_agg import FigureCanvasAgg

            module.FigureCanvas = FigureCanvasAgg
            module.FigureManager = FigureManagerBase
            module.show = _show_figures

    if send is not None and not any(getattr(f, "__name__", "") == "Backend" for f in sys.meta_path):
        sys.meta_path.append(Backend)


def run_program(code, user_globals, filename, internal_files):
    """Runs a program and answers how it ended: {"kind": "ok" | "exited" | "exception", ...}.
    An `ok` whose last statement is an expression with a value other than None also has
    "value" (describe_value's report), which the caller takes out before sending the status."""
    if _DISPLAY["send"] is not None:
        import os

        os.environ.setdefault("MPLBACKEND", "module://" + _MPL_BACKEND)
    try:
        try:
            value = run_code(code, user_globals, filename)
        except BaseException:
            # Figures drawn before the exception are shown too; one that fails to draw
            # then never replaces the program's own exception.
            try:
                _show_figures()
            except BaseException:  # noqa: BLE001
                pass
            raise
        # As a notebook does at the end of a cell: figures still open are shown. What that
        # raises is the program's (its figure failed to draw).
        _show_figures()
        report = None if value is None else describe_value(value)
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
    if report is None:
        return {"kind": "ok"}
    return {"kind": "ok", "value": report}


def new_globals():
    """A fresh `__main__` namespace for a session."""
    return {"__name__": "__main__", "__builtins__": __builtins__, "__doc__": None}
