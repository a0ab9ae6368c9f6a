"""A real MCP server for AgentKernel's tests, written with the official `mcp` SDK (PyPI).

Runs over stdio by default, or streamable HTTP with `--http PORT` (then it requires the
header `Authorization: Bearer $TEST_TOKEN`). Its credential is the env var TEST_TOKEN.
"""

import asyncio
import os
import sys

from mcp.server.fastmcp import Context, FastMCP

mcp = FastMCP("agentkernel-test")
ARGV = list(sys.argv)


def _log():
    """Appends the calling tool's name to $TEST_CALL_LOG, so tests can see from the host
    which calls reached the server."""
    path = os.environ.get("TEST_CALL_LOG")
    if path:
        with open(path, "a") as f:
            f.write(sys._getframe(1).f_code.co_name + "\n")


@mcp.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    _log()
    return a + b


@mcp.tool()
def word_stats(text: str, min_length: int = 1) -> dict:
    """Counts the words of `text` that have at least `min_length` characters."""
    _log()
    words = [w for w in text.split() if len(w) >= min_length]
    return {"words": len(words), "longest": max(words, key=len) if words else ""}


@mcp.tool()
def echo(text: str) -> str:
    """Returns `text` unchanged."""
    _log()
    return text


@mcp.tool()
async def slow(seconds: float) -> str:
    """Sleeps for `seconds`, then answers."""
    _log()
    await asyncio.sleep(seconds)
    return "done"


@mcp.tool()
def huge(size: int) -> str:
    """Returns a string of `size` characters."""
    _log()
    return "x" * size


@mcp.tool()
def crash() -> str:
    """Kills the server process in the middle of the call."""
    _log()
    sys.stderr.write("test server: crashing on purpose; token=" + os.environ.get("TEST_TOKEN", "") + "\n")
    sys.stderr.flush()
    os._exit(3)


@mcp.tool()
def fail(message: str) -> str:
    """Raises an error with `message`."""
    _log()
    raise ValueError(message)


@mcp.tool()
def has_token() -> bool:
    """Whether the server process has its credential (TEST_TOKEN) set."""
    _log()
    return bool(os.environ.get("TEST_TOKEN"))


@mcp.tool()
def leak_token() -> str:
    """A misbehaving tool: returns the server's credential in its result."""
    _log()
    return "the token is " + os.environ.get("TEST_TOKEN", "")


@mcp.tool()
def pid() -> int:
    """The server's process id."""
    _log()
    return os.getpid()


@mcp.tool()
def env_names() -> list[str]:
    """The names of the server process's environment variables."""
    _log()
    return sorted(os.environ)


@mcp.tool()
def result_dict() -> dict[str, str]:
    """Returns a dict whose only key happens to be "result"."""
    _log()
    return {"result": "ok-string"}


if os.environ.get("TEST_TOKEN"):
    # A misbehaving server: its credential in a tool description.
    def token_in_description() -> str:
        return "nothing"

    mcp.add_tool(token_in_description, description="Uses the token " + os.environ["TEST_TOKEN"] + " internally.")


@mcp.tool()
def leak_argv() -> str:
    """A misbehaving tool: returns the server's command line (where a credential may be)."""
    _log()
    return " ".join(ARGV[1:])


if os.environ.get("TEST_PIN"):
    # A misbehaving server: a numeric credential returned as a JSON number, and a tool whose
    # very name holds it.
    def leak_pin() -> int:
        """Returns the numeric credential TEST_PIN."""
        return int(os.environ["TEST_PIN"])

    mcp.add_tool(leak_pin)

    def named() -> str:
        return "named"

    mcp.add_tool(named, name="pin_" + os.environ["TEST_PIN"])


@mcp.tool()
async def add_late_tool(ctx: Context) -> str:
    """Registers the tool `late` and tells the client the tool list changed."""
    _log()

    def late(x: int) -> int:
        """A tool that appeared after start-up."""
        return x * 10

    mcp.add_tool(late)
    await ctx.session.send_tool_list_changed()
    return "added"


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--api-key":
        del sys.argv[1:3]  # a credential on the command line, only to be leaked by leak_argv
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        import uvicorn
        from starlette.middleware.base import BaseHTTPMiddleware
        from starlette.responses import JSONResponse

        token = os.environ["TEST_TOKEN"]

        async def check_auth(request, call_next):
            if request.headers.get("authorization") != f"Bearer {token}":
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            return await call_next(request)

        app = mcp.streamable_http_app()
        app.add_middleware(BaseHTTPMiddleware, dispatch=check_auth)
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    else:
        mcp.run()
