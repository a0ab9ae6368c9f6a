# AgentKernel microVM supervisor: runs as root in the guest (started by /init) and speaks
# to the host on the *system* port, /dev/vport0p4, which sandboxed code cannot open (the
# guest agent and the program run as uid 1000 and only inherit ports 1-3).
#
# Frames: a 4-byte big-endian length and a JSON message; some messages are followed by a
# raw payload of `size` bytes (a *bundle* of files). Host -> guest:
#   {"type": "prepare"}                     start a guest agent (uid 1000) that imports what
#                                           it needs and waits for its configuration
#                                           -> {"type": "prepared"}
#   {"type": "put", "dir", "writable", "deleted": [...], "size"} + bundle
#                                           write files into a shared directory
#                                           -> {"type": "put_done", "files": n}
#   {"type": "start", "env", "limits", "cwd", "entropy"}  reseed the kernel's RNG, configure and release the waiting agent,
#                                           which then says hello on port 1 -> {"type": "started"}
#   {"type": "warm"}                        run a throw-away program (see warm()) -> {"type": "warmed"}
#   {"type": "stop"}                        kill every process of the sandbox user
#                                           -> {"type": "stopped"}
#   {"type": "collect", "dir"}              what changed in a writable shared directory
#                                           since the last put/collect
#                                           -> {"type": "changes", "deleted": [...], "size"} + bundle
# Guest -> host, unsolicited: {"type": "ready"} once at boot, and
#   {"type": "agent_exit", "status": n, "oom": bool} when the agent dies.
#
# A bundle is a sequence of entries: a 4-byte length, a JSON header
# {"path": relative, "kind": "file" | "dir", "mode": n, "size": n}, then `size` bytes.
import json
import os
import select
import signal
import stat
import sys

SYS_PORT = "/dev/vport0p4"
AGENT_PORTS = ("/dev/vport0p1", "/dev/vport0p2", "/dev/vport0p3")  # fds 3, 1, 2
AGENT = "/agent.py"
UID = GID = 1000
MAX_HEADER = 1 << 16
# What warm() runs: the agent's start-up imports, then a program compiled and run the way
# the agent runs one, with output, an exception and a subprocess.
WARM_UP = """
import ast, json, linecache, socket, threading, traceback, subprocess, os, sys
code = compile("x = [i * i for i in range(100)]\nprint(sum(x))", "main.py", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
exec(code, {"__name__": "__main__"})
try:
    raise ValueError("warm")
except ValueError:
    traceback.format_exc()
json.dumps(json.loads('{"a": [1, 2.5, "x"]}'))
subprocess.run(["sh", "-c", "echo warm"], capture_output=True)
sys.stdout.flush()
"""


class Port:
    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR)

    def write_all(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def send(self, msg, payload=b""):
        data = json.dumps(msg).encode()
        self.write_all(len(data).to_bytes(4, "big") + data + payload)

    def read_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = os.read(self.fd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError("the host closed the system port")
            buf += chunk
        return bytes(buf)

    def recv(self):
        size = int.from_bytes(self.read_exact(4), "big")
        if size > MAX_HEADER:
            raise ValueError("frame too large")
        return json.loads(self.read_exact(size))


def scan(top):
    """{relative path: (kind, size, mtime_ns, mode)} of the regular files and directories
    under `top` (symlinks and special files are not shared)."""
    found = {}
    todo = [""]
    while todo:
        rel = todo.pop()
        try:
            names = os.listdir(os.path.join(top, rel) if rel else top)
        except OSError:
            continue
        for name in names:
            r = os.path.join(rel, name) if rel else name
            try:
                st = os.lstat(os.path.join(top, r))
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                found[r] = ("dir", 0, 0, stat.S_IMODE(st.st_mode))
                todo.append(r)
            elif stat.S_ISREG(st.st_mode):
                found[r] = ("file", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return found


def bundle(top, paths, found):
    out = bytearray()
    for rel in sorted(paths):
        kind, _, _, mode = found[rel]
        body = b""
        if kind == "file":
            try:
                with open(os.path.join(top, rel), "rb") as f:
                    body = f.read()
            except OSError:
                continue
        head = json.dumps({"path": rel, "kind": kind, "mode": mode, "size": len(body)}).encode()
        out += len(head).to_bytes(4, "big") + head + body
    return bytes(out)


def remove(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        for name in os.listdir(path):
            remove(os.path.join(path, name))
        os.rmdir(path)
    else:
        os.unlink(path)


def safe_rel(rel):
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError("bad path in bundle: %r" % rel)
    return rel


def apply(top, data, deleted, owner):
    for rel in deleted:
        remove(os.path.join(top, safe_rel(rel)))
    view = memoryview(data)
    count = 0
    while view:
        n = int.from_bytes(view[:4], "big")
        head = json.loads(bytes(view[4 : 4 + n]))
        view = view[4 + n :]
        body = view[: head["size"]]
        view = view[head["size"] :]
        path = os.path.join(top, safe_rel(head["path"]))
        mode = head["mode"] & 0o777
        if head["kind"] == "dir":
            if not os.path.isdir(path) or os.path.islink(path):
                remove(path)
                os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.isdir(path) and not os.path.islink(path):
                remove(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            count += 1
        os.chmod(path, mode if owner == UID else mode & 0o755)
        os.lchown(path, owner, owner)
    return count


def reseed(entropy):
    """Every VM restored from one saved state starts with the same kernel random state:
    mix in the host's fresh bytes and force the kernel's CRNG to reseed from them
    (RNDRESEEDCRNG), so `os.urandom` and `random` differ between sandboxes."""
    import fcntl

    if not entropy:
        raise ValueError("no entropy from the host")
    fd = os.open("/dev/urandom", os.O_WRONLY)
    try:
        os.write(fd, entropy)
        fcntl.ioctl(fd, 0x5207)  # RNDRESEEDCRNG = _IO('R', 0x07)
    finally:
        os.close(fd)


def oom_kills():
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Supervisor:
    def __init__(self):
        self.port = Port(SYS_PORT)
        self.agent_pid = None
        self.config_w = None
        self.manifests = {}  # shared directory -> its scan at the last put/collect
        self.oom_before = 0

    def prepare(self):
        config_r, config_w = os.pipe()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(config_w)
                os.close(ready_r)
                fds = [os.open(p, os.O_RDWR) for p in AGENT_PORTS]
                for fd, target in zip(fds, (3, 1, 2)):
                    os.dup2(fd, target)
                os.dup2(config_r, 4)
                os.dup2(ready_w, 5)
                os.closerange(6, 1 << 16)
                os.setsid()
                # The supervisor's immunity to the OOM killer is not inherited by the program.
                with open("/proc/self/oom_score_adj", "w") as f:
                    f.write("0")
                os.setgroups([])
                os.setgid(GID)
                os.setuid(UID)
                os.chdir("/workspace")
                env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
                os.execve("/usr/bin/python3", ["python3", "-I", "-u", "-B", AGENT, "--vm-config-fd", "4", "5"], env)
            finally:
                os._exit(127)
        os.close(config_r)
        os.close(ready_w)
        self.agent_pid = pid
        self.config_w = config_w
        # The agent writes one byte when it has imported what it needs and waits.
        ready = os.read(ready_r, 1)
        os.close(ready_r)
        if ready != b"w":
            raise RuntimeError("the guest agent did not start")

    def start(self, msg):
        reseed(bytes.fromhex(msg.get("entropy", "")))
        limits = msg.get("limits", {})
        tmp = int(limits.get("tmp_bytes", 64 << 20))
        os.system("mount -o remount,size=%d /tmp" % tmp)
        self.oom_before = oom_kills()
        config = json.dumps({"env": msg["env"], "limits": limits, "cwd": msg.get("cwd", "/workspace")}).encode()
        while config:
            config = config[os.write(self.config_w, config):]
        os.close(self.config_w)
        self.config_w = None

    def put(self, msg):
        top = msg["dir"]
        owner = UID if msg.get("writable") else 0
        if not os.path.isdir(top):
            os.makedirs(top, exist_ok=True)
        os.chmod(top, 0o755)
        os.lchown(top, owner, owner)
        data = self.port.read_exact(int(msg["size"]))
        count = apply(top, data, msg.get("deleted", []), owner)
        self.manifests[top] = scan(top)
        return count

    def collect(self, msg):
        top = msg["dir"]
        before = self.manifests.get(top, {})
        now = scan(top)
        changed = [r for r, v in now.items() if before.get(r) != v]
        deleted = [r for r in before if r not in now]
        # A deleted directory's entries go with it: name only the top-most.
        deleted = [r for r in deleted if os.path.dirname(r) in ("", *now)]
        self.manifests[top] = now
        return deleted, bundle(top, changed, now)

    def warm(self):
        """Runs a throw-away program like the agent's first exec, as the sandbox user, so a
        VM restored from a snapshot (whose emulator starts with an empty translation cache)
        serves its first real exec warm. Address randomization is off in the guest, so the
        interpreter's code sits at the same addresses in every process and the translations
        carry over to the agent."""
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(GID)
                os.setuid(UID)
                null = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.execve("/usr/bin/python3", ["python3", "-I", "-B", "-c", WARM_UP], {"HOME": "/tmp"})
            finally:
                os._exit(127)
        os.waitpid(pid, 0)

    def stop(self):
        """Kills every process of the sandbox user (the agent, the program, whatever it
        started), so the host can still collect files after a timeout."""
        for _ in range(50):
            victims = []
            for name in os.listdir("/proc"):
                if name.isdigit():
                    try:
                        with open("/proc/%s/stat" % name) as f:
                            zombie = f.read().rpartition(")")[2].split()[0] == "Z"
                        if os.stat("/proc/" + name).st_uid == UID and not zombie:
                            victims.append(int(name))
                    except (OSError, IndexError):
                        pass
            if not victims:
                return
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.reap()
        raise RuntimeError("the sandbox's processes do not die")

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.agent_pid:
                self.agent_pid = None
                self.port.send({
                    "type": "agent_exit",
                    "status": os.waitstatus_to_exitcode(status),
                    "oom": oom_kills() > self.oom_before,
                })

    def serve(self):
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.port.send({"type": "ready"})
        while True:
            try:
                ready, _, _ = select.select([self.port.fd, wake_r], [], [])
            except InterruptedError:
                continue
            if wake_r in ready:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                self.reap()
            if self.port.fd not in ready:
                continue
            msg = self.port.recv()
            kind = msg.get("type")
            try:
                if kind == "prepare":
                    self.prepare()
                    self.port.send({"type": "prepared"})
                elif kind == "put":
                    self.port.send({"type": "put_done", "files": self.put(msg)})
                elif kind == "start":
                    self.start(msg)
                    self.port.send({"type": "started"})
                elif kind == "warm":
                    self.warm()
                    self.port.send({"type": "warmed"})
                elif kind == "stop":
                    self.stop()
                    self.port.send({"type": "stopped"})
                elif kind == "collect":
                    deleted, data = self.collect(msg)
                    self.port.send({"type": "changes", "deleted": deleted, "size": len(data)}, data)
                else:
                    raise ValueError("unknown message %r" % kind)
            except Exception as e:  # noqa: BLE001 - reported to the host, which gives up the VM
                self.port.send({"type": "error", "message": "%s: %s" % (type(e).__name__, e)})


def main():
    # The OOM killer picks the program, never the supervisor.
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("-1000")
    # Orphans of the program become our children, so they are reaped (PR_SET_CHILD_SUBREAPER).
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
    os.makedirs("/workspace", exist_ok=True)
    os.chown("/workspace", UID, GID)
    Supervisor().serve()


if __name__ == "__main__":
    sys.exit(main())
