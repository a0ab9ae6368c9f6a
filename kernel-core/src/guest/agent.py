# AgentKernel guest agent. Runs inside the sandbox as the interpreter's main program.
#
# Protocol: frames of a 4-byte big-endian length followed by UTF-8 JSON, over the control
# socket on fd 3. The host sends {"type": "exec", "id", "code", "sentinel"} and
# {"type": "tool_result", "id", "ok", "value" | "error"}; the guest sends {"type": "hello"},
# {"type": "tool_call", "id", "name", "args"} and {"type": "done", "id", "status", ...},
# whose optional "value" is the last expression's (program.py: describe_value).
# Program output goes to fds 1 and 2 (pipes read by the host). Where the output of one exec
# ends is marked on both:
# - under this file's init (process backend): the program runs in the agent's own process,
#   so nothing the agent knows is secret from it. The host writes `X` + a per-exec token +
#   the exec's timeout on the lifeline (which only init reads) before each exec; after
#   `done` the agent stops itself (SIGSTOP); init, on seeing it stopped, writes the token's
#   mark on fds 1 and 2. The agent stays stopped until the next `X`. Processes the exec
#   left running are killed at its time limit or at the next `X`, whichever comes first.
# - elsewhere (a microVM), the agent writes the exec's sentinel on both.
#
# If this process is pid 1 of a fresh pid namespace, it forks: the child is the agent, and
# pid 1 stays a tiny init that reaps orphans and exits (taking the whole namespace with it)
# when the agent exits or when the host closes the lifeline pipe on fd 4. When the host
# writes a reset command (one byte + a token) on the lifeline instead, init kills every
# other process, empties the private tmpfs mounts and forks a fresh agent, whose hello and
# output mark carry the token.
#
# In a microVM (`--vm-config-fd CONFIG READY`), the guest's supervisor starts the agent as
# an unprivileged user before the sandbox exists: it imports what it needs, writes one byte
# on READY, and applies the environment, limits and working directory it then reads from
# CONFIG (see _vm_configure) before its hello.
import os
import sys

CONTROL_FD = 3
LIFELINE_FD = 4
AGENT_FILE = sys._getframe().f_code.co_filename
MAX_FRAME = 64 << 20
TOOLS_PARENT = "/"  # parent of the generated `tools` package mounted at /tools
# Bytes the host writes on the lifeline to make init reset the sandbox (EOF still means exit).
RESET = b"R"
RESET_WIPE_WORKSPACE = b"W"
RESET_TOKEN_LEN = 32  # follows the command byte; the new agent echoes it on stdout and stderr
# Byte + token + the exec's timeout in milliseconds (10 digits) the host writes on the
# lifeline before each exec: init marks its end, and ends what it leaves at its time limit.
EXEC_START = b"X"
MQUEUE_DIR = "/dev/mqueue"  # the ipc namespace's message queues (mounted by the jail)
EXEC_TIMEOUT_DIGITS = 10


def _init():
    import select
    import signal
    import time

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def spawn_agent(reset_token=None):
        """Forks an agent; returns its pid and the write end of its go pipe (one byte per
        exec, written once init has dealt with what the previous exec left)."""
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            for fd in (wake_r, wake_w, LIFELINE_FD, go_w):
                os.close(fd)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _set_dumpable(1)
            try:
                _agent(reset_token, go_fd=go_r)
            finally:
                os._exit(0)
        os.close(go_r)
        return pid, go_w

    # Not dumpable, before any agent exists: sandboxed code cannot open /proc/1/mem (or
    # /proc/1/fd) to take over its init. Agents turn it back on for themselves. Without it
    # the sandbox must not start: init exits, and the host reports the failed start.
    if not _set_dumpable(0):
        os.write(2, b"agentkernel init: cannot make itself non-dumpable (prctl PR_SET_DUMPABLE); refusing to start\n")
        os._exit(70)
    # What every agent needs, imported once here: each forked agent starts warm. Frozen
    # objects are left alone by the collector, so forked agents share their pages longer.
    _preimport()
    import gc

    gc.freeze()
    # What a program could change about init (same uid): checked at every reset.
    baseline = _process_state()
    agent_pid, go_w = spawn_agent()
    # The token of the exec in progress (from the host's `X`), until init has marked its end.
    exec_token = None
    # When the time limit of the current (or last) exec runs out (time.monotonic()).
    deadline = None
    # CONTROL_FD stays open (unused here): an agent forked after a reset speaks on it.
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            ready, _, _ = select.select([LIFELINE_FD, wake_r], [], [], wait)
        except InterruptedError:
            continue
        if not ready:
            # The last exec's time is up. If it still runs, the host is killing the sandbox;
            # if it ended, what it left behind ends now.
            deadline = None
            if exec_token is None:
                _end_leftovers(agent_pid)
            continue
        if LIFELINE_FD in ready:
            command = os.read(LIFELINE_FD, 1)
            if command not in (RESET, RESET_WIPE_WORKSPACE, EXEC_START):
                os._exit(0)  # EOF: the host is gone; the namespace dies with us
            try:
                token = os.read(LIFELINE_FD, RESET_TOKEN_LEN).decode("ascii")
                if len(token) != RESET_TOKEN_LEN or not token.isalnum():
                    raise ValueError("bad token")
                if command == EXEC_START:
                    millis = int(os.read(LIFELINE_FD, EXEC_TIMEOUT_DIGITS).decode("ascii"))
                    # Nothing the previous exec left runs into this one.
                    _end_leftovers(agent_pid)
                    exec_token = token
                    deadline = time.monotonic() + millis / 1000
                    # The agent waits stopped since the previous exec's end (or, before its
                    # first, for the go): it cannot stop for this exec before this go.
                    os.kill(agent_pid, signal.SIGCONT)
                    os.write(go_w, b"g")
                    continue
                _reset(command == RESET_WIPE_WORKSPACE, baseline)
            except BaseException:  # noqa: BLE001 - fail closed: the host replaces the sandbox
                os._exit(1)
            exec_token = deadline = None
            os.close(go_w)
            agent_pid, go_w = spawn_agent(token)
            continue
        try:
            os.read(wake_r, 4096)
        except BlockingIOError:
            pass
        _reap(agent_pid)
        # Did the agent stop (the end of an exec)? Continue events need no action here.
        try:
            pid, status = os.waitpid(agent_pid, os.WNOHANG | os.WUNTRACED)
        except ChildProcessError:
            continue
        if pid == agent_pid and not os.WIFSTOPPED(status):
            _agent_ended(status)
        if pid == agent_pid and exec_token is not None:
            _mark_end(exec_token)
            exec_token = None


def _agent_ended(status):
    """Init exits as its agent did (the namespace dies with it)."""
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _reap(agent_pid):
    """Reaps init's exited children (orphans); exits if the agent itself exited."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == agent_pid:
            _agent_ended(status)


def _proc_state(pid):
    """The state letter of `pid` in /proc (`R`, `S`, `T`, `Z`...), None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3].decode("ascii", "replace")


def _kill_all_but(agent_pid):
    """SIGKILLs every process of the sandbox but init and the agent, until none is left
    (zombies, which run nothing, are left to their parents)."""
    import signal
    import time

    while True:
        alive = False
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in (1, agent_pid):
                continue
            if _proc_state(int(name)) in (None, "Z", "X"):
                continue
            alive = True
            try:
                os.kill(int(name), signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap(agent_pid)
        if not alive:
            return
        time.sleep(0.001)


def _end_leftovers(agent_pid):
    """Stops the agent and kills every other process of the sandbox: what an exec left
    running lives until its time limit or the next exec, whichever comes first."""
    import signal

    os.kill(agent_pid, signal.SIGSTOP)
    _kill_all_but(agent_pid)


def _mark_end(token):
    """Marks the end of the exec's output on fds 1 and 2, with the token of the exec that
    only init and the host know (the agent has stopped: its output is all written)."""
    import select

    mark = memoryview(("\x1eAK-END-" + token + "\x1e").encode())
    for fd in (1, 2):
        # Shorter than PIPE_BUF: written whole, never interleaved. Processes the exec left
        # may have made the shared pipe non-blocking.
        while True:
            try:
                os.write(fd, mark)
                break
            except BlockingIOError:
                select.select([], [fd], [])


def _preimport():
    import ast  # noqa: F401
    import json  # noqa: F401
    import linecache  # noqa: F401
    import socket  # noqa: F401
    import threading  # noqa: F401
    import traceback  # noqa: F401


def _set_dumpable(flag):
    """Sets this process's dumpable flag; whether it now reads back as `flag`."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(4, flag, 0, 0, 0)  # PR_SET_DUMPABLE = 4
        return libc.prctl(3, 0, 0, 0, 0) == flag  # PR_GET_DUMPABLE = 3
    except Exception:  # noqa: BLE001 - reported to the caller, which decides
        return False


def _process_state():
    """Limits and scheduling of this process, which same-uid code can change (prlimit,
    setpriority, sched_setaffinity...) and forked agents would inherit."""
    import resource

    limits = {
        name: resource.getrlimit(getattr(resource, name))
        for name in dir(resource)
        if name.startswith("RLIMIT_")
    }
    return (
        limits,
        os.getpriority(os.PRIO_PROCESS, 0),
        sorted(os.sched_getaffinity(0)),
        os.sched_getscheduler(0),
    )


def _reset(wipe_workspace, baseline):
    """Makes the sandbox as clean as a new one, from its init: every other process killed,
    the private tmpfs mounts emptied, the shared fds restored, no System V IPC or POSIX
    message queue left, init's own limits unchanged. Raises if anything would carry over (the caller then exits, and
    the host replaces the sandbox)."""
    import signal
    import socket
    import struct

    os.kill(-1, signal.SIGKILL)  # from pid 1: every process in the namespace but us
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    if _process_state() != baseline:
        raise RuntimeError("init's limits or scheduling were changed")
    # The agent shares these open files with init: undo what a program may have set.
    for fd in (0, 1, 2, CONTROL_FD):
        os.set_blocking(fd, True)
    ctl = socket.socket(fileno=os.dup(CONTROL_FD))
    try:
        zero = struct.pack("ll", 0, 0)
        ctl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, zero)
        ctl.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, zero)
    finally:
        ctl.close()
    tops = ["/tmp", "/dev/shm"] + (["/workspace"] if wipe_workspace else [])
    for top in tops:
        for name in os.listdir(top):
            _remove(os.path.join(top, name))
        if os.listdir(top):
            raise RuntimeError("could not empty " + top)
    for kind in ("shm", "sem", "msg"):
        try:
            with open("/proc/sysvipc/" + kind) as f:
                if len(f.read().splitlines()) > 1:
                    raise RuntimeError("System V IPC objects left: " + kind)
        except FileNotFoundError:
            pass
    # POSIX message queues live in the ipc namespace too, not in a file system the reset
    # empties: the jail mounts the namespace's mqueue file system at MQUEUE_DIR to list
    # them. Without that mount they cannot be seen, so the reset cannot vouch for them.
    with open("/proc/self/mounts") as f:
        if not any(line.split()[1:3] == [MQUEUE_DIR, "mqueue"] for line in f):
            raise RuntimeError("POSIX message queues cannot be listed")
    if os.listdir(MQUEUE_DIR):
        raise RuntimeError("POSIX message queues left")


def _remove(path):
    """Deletes `path` whatever the program did to its modes (same owner: chmod works)."""
    import stat

    todo = [(path, False)]
    while todo:
        p, emptied = todo.pop()
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(p)
        elif emptied:
            os.rmdir(p)
        else:
            os.chmod(p, 0o700)
            todo.append((p, True))
            todo.extend((os.path.join(p, n), False) for n in os.listdir(p))


class _Channel:
    """Frames over the control fd: a socket (process backend) or a character device such
    as a virtio-serial port (microvm backend), read and written with plain os calls."""

    def __init__(self, fd):
        import stat
        import threading

        os.set_inheritable(fd, False)
        self.fd = fd
        self.is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
        if self.is_socket:
            import socket

            self.sock = socket.socket(fileno=fd)
        self.lock = threading.Lock()
        self.json = __import__("json")

    def send(self, msg):
        data = self.json.dumps(msg, default=repr).encode()
        frame = memoryview(len(data).to_bytes(4, "big") + data)
        if self.is_socket:
            self.sock.sendall(frame)
            return
        while frame:
            frame = frame[os.write(self.fd, frame) :]

    def _read_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            if self.is_socket:
                chunk = self.sock.recv(n - len(buf))
            else:
                chunk = os.read(self.fd, n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def recv(self):
        head = self._read_exact(4)
        if head is None:
            return None
        size = int.from_bytes(head, "big")
        if size > MAX_FRAME:
            raise RuntimeError("frame too large from host")
        body = self._read_exact(size)
        if body is None:
            return None
        return self.json.loads(body)


def _make_runtime_module(chan):
    """The `_agentkernel` module over the control channel."""
    import itertools

    ids = itertools.count(1)

    def transport(name, payload):
        with chan.lock:
            call_id = next(ids)
            chan.send({"type": "tool_call", "id": call_id, "name": name, "args": payload})
            reply = chan.recv()
        if reply is None:
            os._exit(0)
        if reply.get("type") != "tool_result" or reply.get("id") != call_id:
            raise RuntimeError("protocol error: unexpected reply to tool call")
        if reply.get("ok"):
            return True, reply.get("value")
        return False, reply.get("error")

    return make_runtime_module(transport)


def _protections():
    found = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Seccomp", "NoNewPrivs", "CapEff", "Seccomp_filters"):
                    found[key] = value.strip()
    except OSError:
        pass
    return found


def _agent(reset_token=None, go_fd=None):
    """The agent. Under init (`go_fd` given) it waits for init's go before each exec and
    stops itself after each `done` (see the top of this file)."""
    import signal

    # What every exec needs is imported before "hello" (by init, before it forked us): a
    # pre-warmed sandbox's first run then costs no more than its later ones.
    if reset_token:
        # Marks where the previous agent's output ends: the host discards everything before.
        mark = ("\x1eAK-RESET-" + reset_token + "\x1e").encode()
        os.write(1, mark)
        os.write(2, mark)
    chan = _Channel(CONTROL_FD)
    runtime = _make_runtime_module(chan)
    sys.modules["_agentkernel"] = runtime

    def send_display(mime, data):
        with chan.lock:
            chan.send({"type": "display", "mime": mime, "data": data})

    install_display(send_display)
    # The generated tool package lives at /tools (when the sandbox has tools): make
    # `import tools` find it, after everything else on the path.
    if TOOLS_PARENT not in sys.path:
        sys.path.append(TOOLS_PARENT)
    user_globals = new_globals()
    # One throw-away run before "hello" warms the exec path (and, after a fork, copies the
    # pages it writes): the first real run is then as fast as the later ones.
    run_code("pass", {"__builtins__": __builtins__}, "<warm-up>")
    chan.send(
        {
            "type": "hello",
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "pid": os.getpid(),
            "protections": _protections(),
            # After a reset: proves this hello is ours, not one the previous program forged
            # on the control socket before it was killed.
            "reset_token": reset_token,
        }
    )
    runs = 0
    while True:
        msg = chan.recv()
        if msg is None:
            return
        if msg.get("type") != "exec":
            chan.send({"type": "error", "message": "unexpected message " + str(msg.get("type"))})
            continue
        if go_fd is not None and not os.read(go_fd, 1):
            return  # init is gone
        runs += 1
        filename = "main.py" if runs == 1 else "main-%d.py" % runs
        status = run_program(msg["code"], user_globals, filename, (AGENT_FILE,))
        value = status.pop("value", None)
        sentinel = msg["sentinel"].encode()
        written = {}
        for name, stream, fd in (("stdout", sys.stdout, 1), ("stderr", sys.stderr, 2)):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:  # noqa: BLE001 - a broken user stream must not break the protocol
                pass
            if go_fd is not None:
                continue  # init marks the end (see the top of this file)
            try:
                os.write(fd, sentinel)
                written[name] = True
            except OSError:
                written[name] = False
        done = {"type": "done", "id": msg["id"], "status": status, "sentinels": written}
        if value is not None:
            done["value"] = value
        chan.send(done)
        if go_fd is not None:
            # Init ends the exec once we are stopped, and continues us for the next one.
            os.kill(os.getpid(), signal.SIGSTOP)


def _vm_configure(config_fd, ready_fd):
    """In a microVM (started by the guest supervisor as uid 1000): warm up, say so on
    `ready_fd`, then wait for this sandbox's configuration on `config_fd` (environment,
    limits, working directory) and apply it. Until then no program has run."""
    import json
    import resource

    _preimport()
    os.write(ready_fd, b"w")
    os.close(ready_fd)
    chunks = []
    while True:
        chunk = os.read(config_fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(config_fd)
    config = json.loads(b"".join(chunks))
    os.environ.clear()
    os.environ.update(config["env"])
    limits = config["limits"]
    for name, key in (("RLIMIT_NPROC", "processes"), ("RLIMIT_FSIZE", "file_size_bytes")):
        if limits.get(key) is not None:
            resource.setrlimit(getattr(resource, name), (limits[key], limits[key]))
    if limits.get("cpu_seconds") is not None:
        # Counted from now: starting the agent has used CPU time already.
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu = int(used.ru_utime + used.ru_stime) + 1 + limits["cpu_seconds"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    os.chdir(config["cwd"])


if os.getpid() == 1:
    _init()
else:
    if sys.argv[1:2] == ["--vm-config-fd"]:
        _vm_configure(int(sys.argv[2]), int(sys.argv[3]))
    _agent()
