# AgentKernel microVM supervisor: runs as root in the guest (started by /init) and speaks
# to the host on the *system* port, /dev/vport0p4, which sandboxed code cannot open (the
# guest agent and the program run as uid 1000 and only inherit ports 1-3).
#
# Frames: a 4-byte big-endian length and a JSON message; some messages are followed by a
# *bundle* of files, streamed. Host -> guest:
#   {"type": "prepare"}                     start a guest agent (uid 1000) that imports what
#                                           it needs and waits for its configuration
#                                           -> {"type": "prepared"}
#   {"type": "put", "dir", "writable", "deleted": [...]} + bundle
#                                           write files into a shared directory
#                                           -> {"type": "put_done", "files": n}
#   {"type": "start", "env", "limits", "cwd", "entropy"}  reseed the kernel's RNG, configure and release the waiting agent,
#                                           which then says hello on port 1 -> {"type": "started"}
#   {"type": "warm"}                        run a throw-away program (see warm()) -> {"type": "warmed"}
#   {"type": "stop"}                        kill every process of the sandbox user
#                                           -> {"type": "stopped"}
#   {"type": "freeze"}                      stop the agent (SIGSTOP), kill every other process
#                                           of the sandbox user -> {"type": "frozen"}
#   {"type": "thaw"}                        resume the agent -> {"type": "thawed"}
#   {"type": "collect", "dir"}              what changed in a writable shared directory
#                                           since the last put/collect
#                                           -> {"type": "changes", "deleted": [...]} + bundle
# Guest -> host, unsolicited: {"type": "ready"} once at boot, and
#   {"type": "agent_exit", "status": n, "oom": bool} when the agent dies.
#
# A bundle is a stream of entries, each a 4-byte length, a JSON header
# {"path": relative, "kind": "file" | "dir", "mode": n, "size": n, "extents": [[offset, length], ...]}
# then the bytes of the extents (the rest of the file is a hole); {"kind": "end"} ends it.
import errno
import json
import os
import select
import signal
import stat
import sys
import time

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


# Files are handled relative to directory fds, one path component at a time, never through a
# symlink (O_NOFOLLOW on every component) and never opening anything but a directory or a
# regular file (O_NONBLOCK, then fstat): the supervisor is root, and the shared directory
# belongs to the program. (The host also stops the program's processes before a copy
# back, and copies in only while they are stopped; these rules hold without that.)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 20
MAX_EXTENTS = 1000


def open_top(top):
    """The shared directory itself (a symlink there is refused, not followed)."""
    return os.open(top, DIR_FLAGS)


def walk(root, parts, create=False, owner=0):
    """An fd of the directory `parts` beneath the directory fd `root`, or None where a part
    is missing or not a directory. `create`: make what is missing (a symlink or a file in
    the way is removed, never followed), new directories belonging to `owner`."""
    fd = os.dup(root)
    for part in parts:
        for _ in range(16):
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
                break
            except OSError as e:
                if not create:
                    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        os.close(fd)
                        return None
                    raise
                if e.errno == errno.ENOENT:
                    try:
                        os.mkdir(part, 0o700, dir_fd=fd)
                        made = os.open(part, DIR_FLAGS, dir_fd=fd)
                        os.fchown(made, owner, owner)
                        os.fchmod(made, 0o755)
                        os.close(made)
                    except FileExistsError:
                        pass
                elif e.errno in (errno.ENOTDIR, errno.ELOOP):
                    remove_at(fd, part)
                else:
                    raise
        else:
            raise RuntimeError("the shared directory keeps changing")
        os.close(fd)
        fd = child
    return fd


def remove_at(dir_fd, name):
    """Removes `name` in the directory fd (and everything beneath it), never through a
    symlink."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    try:
        for child in os.listdir(fd):
            remove_at(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def scan(top):
    """{relative path: (kind, size, mtime_ns, mode)} of the regular files and directories
    under `top` (symlinks and special files are not shared)."""
    found = {}
    try:
        root = open_top(top)
    except OSError:
        return found
    try:
        todo = [""]
        while todo:
            rel = todo.pop()
            fd = walk(root, rel.split("/")) if rel else os.dup(root)
            if fd is None:
                continue
            try:
                names = os.listdir(fd)
            except OSError:
                os.close(fd)
                continue
            for name in names:
                r = rel + "/" + name if rel else name
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    found[r] = ("dir", 0, 0, stat.S_IMODE(st.st_mode))
                    todo.append(r)
                elif stat.S_ISREG(st.st_mode):
                    found[r] = ("file", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
            os.close(fd)
    finally:
        os.close(root)
    return found


def data_extents(fd, size):
    """[[offset, length]] of the file's data (SEEK_DATA/SEEK_HOLE): holes are not sent."""
    out = []
    at = 0
    while at < size:
        try:
            data = os.lseek(fd, at, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                out.append([at, size - at])
                break
            raise
        if data >= size:
            break
        try:
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        except OSError:
            hole = size
        if hole <= data:
            hole = size
        if len(out) + 1 == MAX_EXTENTS:
            out.append([data, size - data])
            break
        out.append([data, hole - data])
        at = hole
    return out


def entry_head(head):
    data = json.dumps(head).encode()
    return len(data).to_bytes(4, "big") + data


def send_bundle(port, top, paths, found):
    """Streams the entries of `paths` (kinds as `found` says) to the host, then the end
    entry. A path that is no longer a directory or a regular file is left out."""
    try:
        root = open_top(top)
    except OSError:
        root = None
    try:
        for rel in sorted(paths) if root is not None else []:
            parts = rel.split("/")
            parent = walk(root, parts[:-1])
            if parent is None:
                continue
            try:
                flags = DIR_FLAGS if found[rel][0] == "dir" else FILE_FLAGS
                try:
                    fd = os.open(parts[-1], flags, dir_fd=parent)
                except OSError:
                    continue
                try:
                    st = os.fstat(fd)
                    mode = stat.S_IMODE(st.st_mode)
                    if stat.S_ISDIR(st.st_mode):
                        port.write_all(entry_head({"path": rel, "kind": "dir", "mode": mode, "size": 0}))
                    elif stat.S_ISREG(st.st_mode):
                        size = st.st_size
                        extents = data_extents(fd, size)
                        port.write_all(entry_head({"path": rel, "kind": "file", "mode": mode, "size": size, "extents": extents}))
                        for offset, length in extents:
                            done = 0
                            while done < length:
                                want = min(length - done, CHUNK)
                                chunk = os.pread(fd, want, offset + done)
                                # A file that shrank meanwhile: zeros, as announced.
                                port.write_all(chunk + bytes(want - len(chunk)))
                                done += want
                finally:
                    os.close(fd)
            finally:
                os.close(parent)
    finally:
        if root is not None:
            os.close(root)
    port.write_all(entry_head({"kind": "end"}))


def safe_parts(rel):
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError("bad path in bundle: %r" % rel)
    return parts


def receive(port, top, deleted, owner):
    """Deletes `deleted` in `top`, then writes the entries the host streams, until the end
    entry: each file into a new file (its data extents only, so holes stay holes) renamed
    into place, with mode and owner set on the open fd."""
    root = open_top(top)
    try:
        for rel in deleted:
            parts = safe_parts(rel)
            parent = walk(root, parts[:-1])
            if parent is not None:
                try:
                    remove_at(parent, parts[-1])
                finally:
                    os.close(parent)
        count = 0
        while True:
            n = int.from_bytes(port.read_exact(4), "big")
            if n > MAX_HEADER:
                raise ValueError("entry header too large")
            head = json.loads(port.read_exact(n))
            if head["kind"] == "end":
                return count
            parts = safe_parts(head["path"])
            mode = head["mode"] & 0o777
            if owner != UID:
                mode &= 0o755
            if head["kind"] == "dir":
                fd = walk(root, parts, create=True, owner=owner)
                os.fchown(fd, owner, owner)
                os.fchmod(fd, mode)
                os.close(fd)
                continue
            size = head["size"]
            extents = head.get("extents")
            if extents is None:
                extents = [[0, size]] if size else []
            parent = walk(root, parts[:-1], create=True, owner=owner)
            try:
                tmp = ".agentkernel-%s.part" % os.urandom(8).hex()
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
                try:
                    for offset, length in extents:
                        done = 0
                        while done < length:
                            want = min(length - done, CHUNK)
                            os.pwrite(fd, port.read_exact(want), offset + done)
                            done += want
                    os.ftruncate(fd, size)
                    os.fchown(fd, owner, owner)
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
                for _ in range(16):
                    try:
                        os.rename(tmp, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
                        break
                    except (IsADirectoryError, FileExistsError):
                        remove_at(parent, parts[-1])
                    except OSError as e:
                        if e.errno != errno.ENOTEMPTY:
                            raise
                        remove_at(parent, parts[-1])
                else:
                    raise RuntimeError("the shared directory keeps changing")
            finally:
                os.close(parent)
            count += 1
    finally:
        os.close(root)


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
        fd = open_top(top)
        try:
            os.fchmod(fd, 0o755)
            os.fchown(fd, owner, owner)
        finally:
            os.close(fd)
        count = receive(self.port, top, msg.get("deleted", []), owner)
        self.manifests[top] = scan(top)
        return count

    def collect(self, msg):
        """Streams what changed in `top` since the last put/collect to the host."""
        top = msg["dir"]
        before = self.manifests.get(top, {})
        now = scan(top)
        changed = [r for r, v in now.items() if before.get(r) != v]
        deleted = [r for r in before if r not in now]
        # A deleted directory's entries go with it: name only the top-most.
        deleted = [r for r in deleted if os.path.dirname(r) in ("", *now)]
        self.manifests[top] = now
        self.port.send({"type": "changes", "deleted": deleted})
        send_bundle(self.port, top, changed, now)

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

    def stop(self, spare=None):
        """Kills every process of the sandbox user (the agent, the program, whatever it
        started) but `spare`, so the host can copy files back with nothing changing them."""
        for _ in range(50):
            victims = []
            for name in os.listdir("/proc"):
                if name.isdigit() and int(name) != spare:
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

    def freeze(self):
        """After an exec: stops the agent (SIGSTOP, all its threads, so a thread the program
        left running changes nothing) and kills every other process of the sandbox user.
        The agent keeps its state and is resumed by thaw() for the next exec."""
        pid = self.agent_pid
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)
            # Wait until every thread is stopped (another vCPU may be running one).
            for _ in range(500):
                try:
                    tasks = os.listdir("/proc/%d/task" % pid)
                    states = []
                    for t in tasks:
                        with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
                            states.append(f.read().rpartition(")")[2].split()[0])
                except (OSError, IndexError):
                    break
                if all(s in ("T", "t", "Z", "X") for s in states):
                    break
                time.sleep(0.01)
            else:
                raise RuntimeError("the guest agent does not stop")
        self.stop(spare=pid)

    def thaw(self):
        if self.agent_pid is not None:
            os.kill(self.agent_pid, signal.SIGCONT)

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
                elif kind == "freeze":
                    self.freeze()
                    self.port.send({"type": "frozen"})
                elif kind == "thaw":
                    self.thaw()
                    self.port.send({"type": "thawed"})
                elif kind == "collect":
                    self.collect(msg)
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
