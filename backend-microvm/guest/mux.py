# AgentKernel stdio multiplexer: runs the guest agent where the host has only one command's
# stdin and stdout to talk through (the msb engine's exec stream), as `python3 -I -u -c MUX`.
#
# stdin, host -> shim: a 4-byte big-endian length and the agent's source; the same for a JSON
# config {"env", "cwd", "uid", "limits": {"processes", "file_size_bytes", "cpu_seconds"}};
# then raw bytes of the agent's control channel.
# stdout, shim -> host: frames of a 1-byte tag, a 4-byte big-endian length and the payload:
# b"c" control channel bytes, b"o" / b"e" the program's stdout / stderr, and b"x" once, when
# the agent is gone: JSON {"status": exit code (negative: the signal), "oom": bool}.
# The shim's own stderr is for its own errors only.
#
# The agent runs in its own session (as `uid` when given, for which the shim must be root),
# with fd 3 a socket to the shim and fds 1 and 2 pipes. When the agent exits, or stdin ends
# (the host is gone), its process group is killed, and with `uid` every process of that
# user (a child in a session of its own too); then the shim exits.
import atexit
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time

IN, OUT = 0, 1


def read_exact(n):
    data = b""
    while len(data) < n:
        chunk = os.read(IN, n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data


def read_block():
    (n,) = struct.unpack(">I", read_exact(4))
    return read_exact(n)


def send(tag, payload):
    data = tag + struct.pack(">I", len(payload)) + payload
    while data:
        data = data[os.write(OUT, data) :]


def oom_kills():
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def write_quietly(path, text):
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError:
        pass


def kill_all(pid, uid):
    """Kills the agent's process group and, with `uid`, every process of that user."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if uid is None:
        return
    killer = os.fork()
    if killer == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)  # every process this user may signal (not itself)
        finally:
            os._exit(0)
    os.waitpid(killer, 0)


source = read_block()
config = json.loads(read_block())
limits = config.get("limits") or {}
host_end, guest_end = socket.socketpair()
out_r, out_w = os.pipe()
err_r, err_w = os.pipe()
oom_before = oom_kills()
# The agent, not the shim, is what the OOM killer should pick.
write_quietly("/proc/self/oom_score_adj", "-1000")
pid = os.fork()
if pid == 0:
    try:
        os.setsid()
        # The OOM killer's first choice (never inherit the shim's -1000).
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(guest_end.fileno(), 3)
        os.closerange(4, 1 << 16)
        for name, key in (("RLIMIT_NPROC", "processes"), ("RLIMIT_FSIZE", "file_size_bytes")):
            if limits.get(key) is not None:
                resource.setrlimit(getattr(resource, name), (limits[key], limits[key]))
        if limits.get("cpu_seconds") is not None:
            # One second more than asked: starting the agent costs CPU time too.
            cpu = limits["cpu_seconds"] + 1
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        uid = config.get("uid")
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        os.chdir(config.get("cwd") or "/")
        os.execve(
            sys.executable,
            [sys.executable, "-I", "-u", "-c", source.decode()],
            config.get("env") or {},
        )
    except BaseException as e:  # noqa: BLE001 - report any failure to start, then die
        os.write(2, ("agentkernel mux: cannot start the agent: %r\n" % (e,)).encode())
    os._exit(127)

# However the shim ends (even by an exception, e.g. its stdout broken), the agent goes too.
atexit.register(kill_all, pid, config.get("uid"))
guest_end.close()
os.close(out_w)
os.close(err_w)
control = host_end.fileno()
sources = {control: b"c", out_r: b"o", err_r: b"e"}
watched = [IN, control, out_r, err_r]
status = None
drain_until = None  # after the agent's exit, how long its output may still take to end
# Bytes from the host not yet taken by the agent: the control socket is written only when
# it has room, so a busy agent never stalls the copying of its output (which could otherwise
# deadlock against a host that waits for that output before reading more).
pending = bytearray()
host_end.setblocking(False)
while sources and (drain_until is None or time.monotonic() < drain_until):
    wanted = [fd for fd in watched if fd != IN or len(pending) < (1 << 20)]
    writable = [control] if pending and control in sources else []
    readable, ready, _ = select.select(wanted, writable, [], 0.2)
    if ready:
        try:
            del pending[: host_end.send(pending)]
        except BlockingIOError:
            pass
        except OSError:  # the agent is gone; its exit is reported below
            pending.clear()
    for fd in readable:
        if fd == IN:
            data = os.read(IN, 1 << 16)
            if not data:  # the host is gone
                kill_all(pid, config.get("uid"))
                sys.exit(0)
            pending += data
            continue
        try:
            data = host_end.recv(1 << 16) if fd == control else os.read(fd, 1 << 16)
        except BlockingIOError:
            continue
        except OSError:  # e.g. the agent reset its end: the same as its end closing
            data = b""
        if data:
            send(sources[fd], data)
        else:
            watched.remove(fd)
            del sources[fd]
    if status is None:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(wait_status)
            drain_until = time.monotonic() + 2
            # The agent is gone: end what it started too, so its pipes close.
            kill_all(pid, config.get("uid"))
if status is None:
    _, wait_status = os.waitpid(pid, 0)
    status = os.waitstatus_to_exitcode(wait_status)
    kill_all(pid, config.get("uid"))
send(b"x", json.dumps({"status": status, "oom": oom_kills() > oom_before}).encode())
