#!/usr/bin/env python3
"""ftpsfs benchmark harness (not part of `cargo test`). Start it with tests/bench/run.

See tests/bench/README.md for what it measures and how.
"""

import argparse
import atexit
import datetime
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
REL = os.path.join(REPO, "target", "release")
FTPSFS = os.path.join(REL, "ftpsfs")
TEST_SERVER = os.path.join(REL, "examples", "test_server")
DELAY_PROXY = os.path.join(REL, "examples", "delay_proxy")
RESULTS_DIR = os.path.join(REPO, "tests", "bench", "results")
MiB = 1024 * 1024
CMD_TIMEOUT = 900  # seconds, any single timed command
RCLONE_RANDOM_READS = 50  # (g) for rclone: see Bench.g
J_RATE_MBIT = 100  # (j): the proxy's cap per connection and direction

STATE = {"server": None, "proxy": None, "mounts": set(), "work": None}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# cleanup


def cleanup():
    for m in list(STATE["mounts"]):
        try:
            unmount(m)
        except Exception as e:  # noqa: BLE001
            log(f"cleanup: unmount {m}: {e}")
    p = STATE.get("proxy")
    if p and p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
    s = STATE.get("server")
    if s and s.poll() is None:
        try:
            s.stdin.close()
        except Exception:  # noqa: BLE001
            pass
        s.terminate()
        try:
            s.wait(15)
        except subprocess.TimeoutExpired:
            s.kill()
    for t in list(STATE.get("tmpfs", ())):
        umount_tmpfs(t)
    w = STATE.get("work")
    if w and os.path.isdir(w) and not os.environ.get("BENCH_KEEP"):
        shutil.rmtree(w, ignore_errors=True)
    STATE.update(server=None, proxy=None, work=None)


def on_signal(signum, _frame):
    log(f"signal {signum}: cleaning up")
    cleanup()
    sys.exit(128 + signum)


# ---------------------------------------------------------------------------
# helpers


def sh(cmd, timeout=CMD_TIMEOUT, check=True, **kw):
    r = subprocess.run(cmd, timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(
            f"{cmd if isinstance(cmd, str) else ' '.join(map(str, cmd))} -> rc {r.returncode}: "
            f"{r.stderr.decode(errors='replace').strip()[-400:]}"
        )
    return r


def timed(cmd, **kw):
    t = time.perf_counter()
    sh(cmd, **kw)
    return time.perf_counter() - t


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def write_random(path, size):
    with open("/dev/urandom", "rb") as src, open(path, "wb") as dst:
        left = size
        while left:
            n = min(left, 4 * MiB)
            dst.write(src.read(n))
            left -= n


# ---------------------------------------------------------------------------
# server, proxy, mounts


class Server:
    def __init__(self):
        log("starting proftpd via test_server")
        self.proc = subprocess.Popen(
            [TEST_SERVER, "proftpd"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(os.path.join(STATE["work"], "test_server.err"), "wb"),
        )
        STATE["server"] = self.proc
        self.info = {}
        while "LOGDIR" not in self.info:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError("test_server exited before printing LOGDIR=")
            k, _, v = line.strip().partition("=")
            self.info[k] = v
        self.port = int(self.info["PORT"])
        self.root = self.info["ROOT"]
        self.ca = self.info["CAFILE"]
        self.user = self.info["USER"]
        self.password = self.info["PASSWORD"]
        conf = open(os.path.join(self.info["LOGDIR"], "proftpd.conf")).read()
        m = re.search(r"^\s*PassivePorts\s+(\d+)\s+(\d+)", conf, re.M)
        self.pasv = (int(m.group(1)), int(m.group(2)))
        m = re.search(r"^\s*TLSRSACertificateFile\s+(\S+)", conf, re.M)
        out = sh(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", m.group(1)])
        self.fingerprint = "sha256:" + out.stdout.decode().split("=", 1)[1].strip().replace(":", "")
        pw = pwd.getpwnam(self.user)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        w = STATE["work"]
        self.pwfile = os.path.join(w, "password")
        self.curlcfg = os.path.join(w, "curl.cfg")
        for path, text in ((self.pwfile, self.password + "\n"),
                           (self.curlcfg, f'user = "{self.user}:{self.password}"\n')):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, text.encode())
            os.close(fd)
        log(f"server on 127.0.0.1:{self.port}, passive {self.pasv[0]}-{self.pasv[1]}, root {self.root}")

    def give(self, path):
        """Make a prepared path owned by the FTP user and world-readable."""
        for dirpath, dirnames, filenames in os.walk(path):
            os.chown(dirpath, self.uid, self.gid)
            os.chmod(dirpath, 0o755)
            for f in filenames:
                p = os.path.join(dirpath, f)
                os.chown(p, self.uid, self.gid)
                os.chmod(p, 0o644)
        if os.path.isfile(path):
            os.chown(path, self.uid, self.gid)
            os.chmod(path, 0o644)


class Net:
    """How clients reach the server at a given RTT (direct, or through delay_proxy)."""

    def __init__(self, srv, rtt_ms, rate_mbit=None):
        self.srv = srv
        self.rtt = rtt_ms
        self.rate_mbit = rate_mbit
        self.host = "127.0.0.1" if rtt_ms == 0 else "127.0.0.2"
        self.measured_rtt_ms = None
        if rtt_ms:
            ports = f"{srv.port},{srv.pasv[0]}-{srv.pasv[1]}"
            self.proxy = subprocess.Popen(
                [DELAY_PROXY, "--rtt-ms", str(rtt_ms), "--ports", ports,
                 "--listen", "127.0.0.2", "--target", "127.0.0.1"]
                + (["--rate-mbit", str(rate_mbit)] if rate_mbit else []),
                stdout=subprocess.PIPE,
                stderr=open(os.path.join(STATE["work"], f"proxy-{rtt_ms}.err"), "wb"),
            )
            STATE["proxy"] = self.proxy
            line = self.proxy.stdout.readline().decode()
            if not line.startswith("READY"):
                raise RuntimeError(f"delay_proxy did not start: {line!r}")
            log(f"delay_proxy: {line.strip()}")
        self.measured_rtt_ms = self.measure_rtt()
        log(f"measured RTT (FTP command round trip) to {self.host}: {self.measured_rtt_ms:.2f} ms")

    def stop(self):
        if self.rtt and self.proxy.poll() is None:
            self.proxy.terminate()
            self.proxy.wait(5)
            STATE["proxy"] = None

    def measure_rtt(self):
        """Median time of a command round trip on the control connection (after the greeting)."""
        samples = []
        for _ in range(7):
            s = socket.create_connection((self.host, self.srv.port), timeout=10)
            s.recv(4096)
            t = time.perf_counter()
            s.sendall(b"NOOP\r\n")
            s.recv(4096)
            samples.append((time.perf_counter() - t) * 1000)
            s.close()
        return statistics.median(samples)

    def url(self, path=""):
        return f"ftp://{self.host}:{self.srv.port}/{path}"

    def curl(self, *args):
        trust = ["--cacert", self.srv.ca] if self.rtt == 0 else ["--insecure"]
        return ["curl", "-s", "-S", "--fail", "--ssl-reqd", *trust, "-K", self.srv.curlcfg, *args]

    def lftp(self, *commands):
        """lftp with the password in a 0600 script file (not visible in ps)."""
        trust = (f"set ssl:ca-file {self.srv.ca}" if self.rtt == 0
                 else "set ssl:verify-certificate no")
        script = os.path.join(STATE["work"], "cmd.lftp")
        text = (
            f"{trust}; set ftp:ssl-force true; set ftp:ssl-protect-data true; "
            "set net:max-retries 1; set net:timeout 60; set cmd:fail-exit yes; "
            "set xfer:clobber yes\n"
            f"open -u {self.srv.user},{self.srv.password} ftp://{self.host}:{self.srv.port}\n"
            + "\n".join(commands) + "\n"
        )
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, text.encode())
        os.close(fd)
        return ["lftp", "-f", script]

    def mount(self, mnt, tool="ftpsfs", spool=None, opts=""):
        """`spool`: another spool_dir; `opts`: more -o options (ftpsfs only);
        BENCH_FTPSFS_OPTS: extra mount options for every ftpsfs mount (e.g. segments=1)."""
        os.makedirs(mnt, exist_ok=True)
        if tool == "rclone":
            return self.rclone_mount(mnt)
        spool = spool or os.path.join(STATE["work"], "spool")
        os.makedirs(spool, exist_ok=True)
        trust = f"cafile={self.srv.ca}" if self.rtt == 0 else f"fingerprint={self.srv.fingerprint}"
        url = f"ftp://{self.srv.user}@{self.host}:{self.srv.port}/"
        extra = ",".join(filter(None, [os.environ.get("BENCH_FTPSFS_OPTS", ""), opts]))
        o = f"{trust},password_file={self.srv.pwfile},spool_dir={spool}" + (f",{extra}" if extra else "")
        sh([FTPSFS, url, mnt, "-o", o], timeout=60)
        STATE["mounts"].add(mnt)
        return Mount(mnt, "ftpsfs")

    def rclone_config(self):
        """A 0600 rclone config with the remote `bench:` (password obscured, not in ps)."""
        path = os.path.join(STATE["work"], f"rclone-{self.rtt}.conf")
        if not os.path.exists(path):
            obscured = sh(["rclone", "obscure", "-"], input=self.srv.password.encode()).stdout
            text = (
                "[bench]\ntype = ftp\n"
                f"host = {self.host}\nport = {self.srv.port}\nuser = {self.srv.user}\n"
                f"pass = {obscured.decode().strip()}\nexplicit_tls = true\n"
                # the certificate names 127.0.0.1; at RTT > 0 curl runs with --insecure too
                + ("no_check_certificate = true\n" if self.rtt else "")
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, text.encode())
            os.close(fd)
        return path

    def rclone_mount(self, mnt):
        """`rclone mount` with its defaults (--vfs-cache-mode off: writes stream to the
        server and close() returns once the upload is done, like ftpsfs)."""
        cmd = ["rclone", "mount", "bench:", mnt, "--config", self.rclone_config(), "--daemon",
               "--log-file", os.path.join(STATE["work"], "rclone.log")]
        # rclone's FTP backend ignores --ca-cert; Go reads extra roots from SSL_CERT_FILE
        env = dict(os.environ, SSL_CERT_FILE=self.srv.ca)
        # the daemon keeps its parent's stdout/stderr: give it files, not pipes
        with open(os.path.join(STATE["work"], "rclone.out"), "ab") as out:
            r = subprocess.run(cmd, timeout=60, env=env, stdin=subprocess.DEVNULL,
                               stdout=out, stderr=out)
        if r.returncode:
            raise RuntimeError(f"rclone mount -> rc {r.returncode} (see rclone.log)")
        STATE["mounts"].add(mnt)
        deadline = time.time() + 30
        while not os.path.ismount(mnt):
            if time.time() > deadline:
                raise RuntimeError("rclone mount did not come up in 30 s")
            time.sleep(0.05)
        return Mount(mnt, "rclone")


def mount_pids(mnt, tool="ftpsfs"):
    pattern = f"ftpsfs .*{re.escape(mnt)}( |$)" if tool == "ftpsfs" else f"rclone mount .*{re.escape(mnt)}( |$)"
    r = subprocess.run(["pgrep", "-f", pattern], stdout=subprocess.PIPE)
    return [int(x) for x in r.stdout.split()]


class Mount:
    def __init__(self, mnt, tool):
        self.mnt = mnt
        self.tool = tool
        pids = mount_pids(mnt, tool)
        self.pid = pids[0] if pids else None

    def hwm_mib(self):
        """Peak RSS (VmHWM) of the ftpsfs daemon, MiB."""
        try:
            for line in open(f"/proc/{self.pid}/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except (OSError, TypeError):
            pass
        return float("nan")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        unmount(self.mnt)


def unmount(mnt):
    pids = mount_pids(mnt, "ftpsfs") + mount_pids(mnt, "rclone")
    for i in range(20):
        r = subprocess.run(["fusermount3", "-u", mnt], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode == 0 or not os.path.ismount(mnt):
            break
        time.sleep(0.5)
    else:
        subprocess.run(["fusermount3", "-u", "-z", mnt])
    # wait for the daemon to go away so the next mount is really fresh
    deadline = time.time() + 20
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.05)
    STATE["mounts"].discard(mnt)


# ---------------------------------------------------------------------------
# results


class Results:
    def __init__(self):
        self.rows = []  # (scenario, tool, unit, values, raw_key, key, higher_better, note)
        self.by_key = {}

    def add(self, scenario, tool, unit, values, raw=None, note=""):
        key = (scenario, tool)
        self.by_key[key] = values
        self.rows.append(dict(scenario=scenario, tool=tool, unit=unit, values=values, raw=raw, note=note))

    def fail(self, scenario, tool, err):
        self.rows.append(dict(scenario=scenario, tool=tool, unit="", values=[], raw=None,
                              note=f"FAILED: {err}"))

    def table(self):
        out = ["| scenario | tool | median | min–max | ratio to raw | note |",
               "|---|---|---|---|---|---|"]
        for r in self.rows:
            v = r["values"]
            if not v:
                out.append(f"| {r['scenario']} | {r['tool']} | – | – | – | {r['note']} |")
                continue
            med = statistics.median(v)
            fmt = fmt_num
            ratio = "–"
            if r["raw"] and self.by_key.get(r["raw"]):
                rawmed = statistics.median(self.by_key[r["raw"]])
                if rawmed:
                    ratio = f"{med / rawmed:.2f}"
            out.append(
                f"| {r['scenario']} | {r['tool']} | {fmt(med)} {r['unit']} | "
                f"{fmt(min(v))}–{fmt(max(v))} | {ratio} | {r['note']} |"
            )
        return "\n".join(out)


def fmt_num(x):
    if x != x:
        return "nan"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


# ---------------------------------------------------------------------------
# data preparation (directly in the server's ROOT)


class Data:
    def __init__(self, srv, local):
        self.srv = srv
        self.local = local
        self.root = srv.root

    def big(self, size_mib):
        name = f"big_{size_mib}M"
        p = os.path.join(self.root, name)
        if not os.path.exists(p):
            log(f"creating {name}")
            write_random(p, size_mib * MiB)
            self.srv.give(p)
        return name

    def par(self, i, size_mib):
        name = f"par{i}_{size_mib}M"
        p = os.path.join(self.root, name)
        if not os.path.exists(p):
            log(f"creating {name}")
            write_random(p, size_mib * MiB)
            self.srv.give(p)
        return name

    def local_file(self, size_mib):
        p = os.path.join(self.local, f"src_{size_mib}M")
        if not os.path.exists(p):
            log(f"creating local {size_mib} MiB source")
            write_random(p, size_mib * MiB)
        return p

    def flat_dir(self, n):
        name = f"dir{n}"
        p = os.path.join(self.root, name)
        if not os.path.isdir(p):
            log(f"creating {name} with {n} files")
            os.mkdir(p)
            for i in range(n):
                fd = os.open(os.path.join(p, f"file{i:06d}.dat"), os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, b"x" * (i % 100))
                os.close(fd)
            self.srv.give(p)
        return name

    def tree(self, ndirs=100, nfiles=2000):
        name = "tree"
        p = os.path.join(self.root, name)
        if not os.path.isdir(p):
            log(f"creating tree: {nfiles} files in {ndirs} directories")
            os.mkdir(p)
            for d in range(ndirs):
                dp = os.path.join(p, f"d{d:03d}")
                os.mkdir(dp)
                for f in range(nfiles // ndirs):
                    with open(os.path.join(dp, f"f{f:03d}.txt"), "wb") as fh:
                        fh.write(b"y" * 100)
            self.srv.give(p)
        return name

    def small_files_local(self, n):
        p = os.path.join(self.local, f"small{n}")
        if not os.path.isdir(p):
            os.mkdir(p)
            for i in range(n):
                with open(os.path.join(p, f"s{i:04d}.bin"), "wb") as fh:
                    fh.write(os.urandom(4096))
        return p

    def small_files_remote(self, n):
        name = f"small{n}"
        p = os.path.join(self.root, name)
        if not os.path.isdir(p):
            shutil.copytree(self.small_files_local(n), p)
            self.srv.give(p)
        return name

    def rm_remote(self, name):
        p = os.path.join(self.root, name)
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        elif os.path.exists(p):
            os.unlink(p)


# ---------------------------------------------------------------------------
# scenarios


def complete_files(d, size):
    """How many files directly in `d` have exactly `size` bytes."""
    if not os.path.isdir(d):
        return 0
    return sum(1 for e in os.scandir(d) if e.is_file() and e.stat().st_size == size)


PREAD_SCRIPT = r"""
import os, random, sys, time
path, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
rnd = random.Random(seed)
offs = [rnd.randrange(0, size - 4096) // 4096 * 4096 for _ in range(n)]
t0 = time.perf_counter()
for o in offs:
    if len(os.pread(fd, 4096, o)) != 4096:
        sys.exit("short read at %d" % o)
print((time.perf_counter() - t0) / n)
"""


def sizes_for(quick, rtt):
    s = dict(a=1024, b=512, c=10000, d=(100, 2000), e=500, f=256, g=1000, scale=[1000, 10000, 100000],
             j=1024)
    if quick:
        s.update(a=256, b=128, f=64, g=300, scale=[1000, 10000], j=256)
    if rtt:
        s.update(a=256, b=128, e=200, f=128, g=200)
        if quick:
            s.update(a=128, b=64, e=100, f=64, g=100)
    return s


class Bench:
    def __init__(self, net, data, runs, sizes, res, only, tools):
        self.net, self.data, self.runs, self.s, self.res = net, data, runs, sizes, res
        self.mnt = os.path.join(STATE["work"], "mnt")
        self.only = only
        self.tools = tools  # "ftpsfs", and "rclone" when installed
        self.hwm = {}

    def want(self, name):
        return not self.only or name in self.only

    def run_all(self):
        for name, fn in (("a", self.a), ("b", self.b), ("c", self.c), ("d", self.d), ("e", self.e),
                         ("f", self.f), ("g", self.g), ("scale", self.scale), ("j", self.j),
                         ("i", lambda: scenario_i(self)), ("k", lambda: scenario_k(self))):
            if not self.want(name):
                continue
            log(f"scenario {name}")
            t = time.perf_counter()
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                log(f"scenario {name} failed: {e}")
                self.res.fail(f"({name})", "?", str(e).replace("|", "/").replace("\n", " ")[:300])
                for m in list(STATE["mounts"]):
                    unmount(m)
            log(f"scenario {name} took {time.perf_counter() - t:.1f} s")
        for scen in ("a", "b", "f", "j"):
            for tool in self.tools:
                if self.hwm.get((scen, tool)):
                    self.res.add(f"(h) peak RSS during ({scen})", tool, "MiB", self.hwm[(scen, tool)])

    def run_once(self, label, tool, unit, fn, i):
        """One run of `fn`; on failure the scenario's row says so and None is returned."""
        try:
            v = fn(i)
        except Exception as e:  # noqa: BLE001
            log(f"{label} / {tool} run {i}: {e}")
            for m in list(STATE["mounts"]):
                unmount(m)
            self.res.fail(label, tool, str(e).replace("|", "/").replace("\n", " ")[:300])
            return None
        log(f"  {label} / {tool} run {i}: {fmt_num(v)} {unit}")
        return v

    def measure(self, label, tool, unit, fn, raw=None, note=""):
        vals = []
        for i in range(self.runs):
            v = self.run_once(label, tool, unit, fn, i)
            if v is None:
                return
            vals.append(v)
        self.res.add(label, tool, unit, vals, raw=raw, note=note)

    def measure_alternating(self, label, raw_tool, raw_fn, mount_fn, unit):
        """Runs the raw client and each mount in turn (raw 0, ftpsfs 0, rclone 0, raw 1,
        ...), so that a drift in the machine's load affects all columns alike; the ratio
        compares medians from the same stretch of time. `mount_fn(tool)` gives the run
        function of a mount tool; a tool that fails drops out, the others go on."""
        fns = [(raw_tool, raw_fn)] + [(t, mount_fn(t)) for t in self.tools]
        vals = {tool: [] for tool, _ in fns}
        failed = set()
        for i in range(self.runs):
            for tool, fn in fns:
                if tool in failed:
                    continue
                v = self.run_once(label, tool, unit, fn, i)
                if v is None:
                    failed.add(tool)
                    continue
                vals[tool].append(v)
        for tool, _ in fns:
            if tool not in failed:
                raw = None if tool == raw_tool else (label, raw_tool)
                self.res.add(label, tool, unit, vals[tool], raw=raw)

    def measure_mounts(self, label, unit, mount_fn, raw=None, note=""):
        for tool in self.tools:
            self.measure(label, tool, unit, mount_fn(tool), raw=raw, note=note)

    def raw_mlsd(self, d):
        """One MLSD of `d` by curl, after the same drop_caches that a cold mount gets
        (the server then reads the directory's inodes from disk in both columns)."""
        drop_caches()
        return timed(self.net.curl("-X", "MLSD", "-o", "/dev/null", self.net.url(d + "/")))

    def fresh(self, tool="ftpsfs"):
        m = self.net.mount(self.mnt, tool)
        drop_caches()
        return m

    # (a) sequential read, cold
    def a(self):
        size = self.s["a"]
        name = self.data.big(size)
        label = f"(a) seq read {size} MiB, cold"

        def ftp(tool):
            def run(_):
                with self.fresh(tool) as m:
                    t = timed(["dd", f"if={m.mnt}/{name}", "of=/dev/null", "bs=1M"])
                    self.hwm.setdefault(("a", tool), []).append(m.hwm_mib())
                return size * MiB / t / 1e6
            return run

        def curl(_):
            drop_caches()
            return size * MiB / timed(self.net.curl("-o", "/dev/null", self.net.url(name))) / 1e6

        self.measure_alternating(label, "curl", curl, ftp, "MB/s")

    # (j) one large file over a path that caps each connection (segmented reads)
    def j(self):
        if not self.net.rtt:
            log("(j) needs the delaying proxy: it runs in the RTT > 0 passes only")
            return
        size = self.s["j"]
        name = self.data.big(size)
        label = f"(j) one {size} MiB file, {J_RATE_MBIT} Mbit/s per connection, cold"
        srv, rtt = self.net.srv, self.net.rtt
        # The same proxy, with the cap, for this scenario only.
        self.net.stop()
        saved, self.net = self.net, Net(srv, rtt, rate_mbit=J_RATE_MBIT)
        out = os.path.join(STATE["work"], "pget.out")

        def curl(_):
            drop_caches()
            return size * MiB / timed(self.net.curl("-o", "/dev/null", self.net.url(name))) / 1e6

        def pget(_):
            drop_caches()
            try:
                return size * MiB / timed(self.net.lftp(f"pget -n 4 /{name} -o {out}")) / 1e6
            finally:
                if os.path.exists(out):
                    got = os.path.getsize(out)
                    os.remove(out)
                    if got != size * MiB:
                        raise RuntimeError(f"lftp pget wrote {got} bytes")

        def ftp(tool):
            def run(_):
                with self.fresh(tool) as m:
                    t = timed(["dd", f"if={m.mnt}/{name}", "of=/dev/null", "bs=1M"])
                    self.hwm.setdefault(("j", tool), []).append(m.hwm_mib())
                return size * MiB / t / 1e6
            return run

        # In turn (curl, lftp, each mount, curl, ...), as (a) does.
        fns = [("curl", curl), ("lftp pget -n 4", pget)] + [(t, ftp(t)) for t in self.tools]
        vals = {tool: [] for tool, _ in fns}
        failed = set()
        try:
            for i in range(self.runs):
                for tool, fn in fns:
                    if tool in failed:
                        continue
                    v = self.run_once(label, tool, "MB/s", fn, i)
                    if v is None:
                        failed.add(tool)
                    else:
                        vals[tool].append(v)
        finally:
            self.net.stop()
            saved.__init__(srv, rtt)
            self.net = saved
        pget_med = statistics.median(vals["lftp pget -n 4"]) if vals["lftp pget -n 4"] else None
        for tool, _ in fns:
            if tool in failed:
                continue
            note = ""
            if tool in self.tools and pget_med:
                note = f"{statistics.median(vals[tool]) / pget_med:.2f}× lftp pget -n 4"
            self.res.add(label, tool, "MB/s", vals[tool],
                         raw=None if tool == "curl" else (label, "curl"), note=note)

    # (b) sequential write, timed until close() returns
    def b(self):
        size = self.s["b"]
        src = self.data.local_file(size)
        label = f"(b) seq write {size} MiB"

        def ftp(tool):
            def run(i):
                with self.net.mount(self.mnt, tool) as m:
                    t = timed(["dd", f"if={src}", f"of={m.mnt}/up_b_{i}", "bs=1M"])
                    # close() has returned: the whole file must be on the server now,
                    # under its final name
                    on_server = os.path.join(self.data.root, f"up_b_{i}")
                    got = os.path.getsize(on_server) if os.path.exists(on_server) else -1
                    self.hwm.setdefault(("b", tool), []).append(m.hwm_mib())
                self.data.rm_remote(f"up_b_{i}")
                if got != size * MiB:
                    raise RuntimeError(f"after close() the server has {got} of {size * MiB} bytes")
                return size * MiB / t / 1e6
            return run

        def curl(i):
            t = timed(self.net.curl("-T", src, self.net.url(f"up_braw_{i}")))
            self.data.rm_remote(f"up_braw_{i}")
            return size * MiB / t / 1e6

        self.measure_alternating(label, "curl -T", curl, ftp, "MB/s")

    # (c) ls -l of a 10k directory, cold then warm
    def c(self):
        n = self.s["c"]
        d = self.data.flat_dir(n)
        label = f"(c) ls -l {n} files"
        self.measure(label, "curl -X MLSD (1 MLSD)", "s", lambda _: self.raw_mlsd(d))
        raw = (label, "curl -X MLSD (1 MLSD)")
        for tool in self.tools:
            cold, warm = [], []
            try:
                for i in range(self.runs):
                    with self.fresh(tool) as m:
                        cold.append(timed(f"ls -l {m.mnt}/{d} > /dev/null", shell=True))
                        warm.append(timed(f"ls -l {m.mnt}/{d} > /dev/null", shell=True))
                    log(f"  {label} / {tool}: cold {cold[-1]:.3f} s, warm {warm[-1]:.3f} s")
            except Exception as e:  # noqa: BLE001
                log(f"{label} / {tool}: {e}")
                self.res.fail(label, tool, str(e).replace("|", "/").replace("\n", " ")[:300])
                continue
            self.res.add(label, f"{tool} cold", "s", cold, raw=raw)
            self.res.add(label, f"{tool} warm", "s", warm, raw=raw)

    # (d) find over a tree, cold
    def d(self):
        ndirs, nfiles = self.s["d"]
        t = self.data.tree(ndirs, nfiles)
        label = f"(d) find {nfiles} files / {ndirs} dirs, cold"

        def ftp(tool):
            def run(_):
                with self.fresh(tool) as m:
                    return timed(f"find {m.mnt}/{t} > /dev/null", shell=True)
            return run

        self.measure(label, "lftp find", "s", lambda _: timed(self.net.lftp(f"find /{t}")))
        self.measure_mounts(label, "s", ftp, raw=(label, "lftp find"))

    # (e) cp -r of small files into and out of the mount
    def e(self):
        n = self.s["e"]
        src = self.data.small_files_local(n)
        remote = self.data.small_files_remote(n)
        out = os.path.join(STATE["work"], "out")
        label_in = f"(e) cp -r {n}×4 KiB into mount"
        label_out = f"(e') cp -r {n}×4 KiB out of mount, cold"

        def ftp_in(tool):
            def run(i):
                with self.net.mount(self.mnt, tool) as m:
                    t = timed(["cp", "-r", src, f"{m.mnt}/ein_{i}"])
                    # cp has closed every file: all must be on the server, complete
                    got = complete_files(os.path.join(self.data.root, f"ein_{i}"), 4096)
                self.data.rm_remote(f"ein_{i}")
                if got != n:
                    raise RuntimeError(f"only {got} of {n} files arrived complete")
                return n / t
            return run

        def lftp_in(i):
            t = timed(self.net.lftp(f"mirror -R {src} /einraw_{i}"))
            got = len(os.listdir(os.path.join(self.data.root, f"einraw_{i}")))
            self.data.rm_remote(f"einraw_{i}")
            if got != n:
                raise RuntimeError(f"only {got} of {n} files arrived")
            return n / t

        def ftp_out(tool):
            def run(_):
                shutil.rmtree(out, ignore_errors=True)
                with self.fresh(tool) as m:
                    t = timed(["cp", "-r", f"{m.mnt}/{remote}", out])
                if complete_files(out, 4096) != n:
                    raise RuntimeError("missing or short files")
                return n / t
            return run

        def lftp_out(_):
            shutil.rmtree(out, ignore_errors=True)
            drop_caches()
            t = timed(self.net.lftp(f"mirror /{remote} {out}"))
            if len(os.listdir(out)) != n:
                raise RuntimeError("missing files")
            return n / t

        self.measure(label_in, "lftp mirror -R", "files/s", lftp_in)
        self.measure_mounts(label_in, "files/s", ftp_in, raw=(label_in, "lftp mirror -R"))
        self.measure(label_out, "lftp mirror", "files/s", lftp_out)
        self.measure_mounts(label_out, "files/s", ftp_out, raw=(label_out, "lftp mirror"))
        shutil.rmtree(out, ignore_errors=True)

    # (f) 4 parallel sequential reads
    def f(self):
        size = self.s["f"]
        names = [self.data.par(i, size) for i in range(4)]
        label = f"(f) 4×{size} MiB parallel read, cold (aggregate)"

        def parallel(cmds):
            t = time.perf_counter()
            procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
            errs = []
            for p in procs:
                _, err = p.communicate(timeout=CMD_TIMEOUT)
                if p.returncode:
                    errs.append(err.decode(errors="replace").strip()[-200:])
            if errs:
                raise RuntimeError("; ".join(errs))
            return time.perf_counter() - t

        def ftp(tool):
            def run(_):
                with self.fresh(tool) as m:
                    t = parallel([["dd", f"if={m.mnt}/{nm}", "of=/dev/null", "bs=1M"] for nm in names])
                    self.hwm.setdefault(("f", tool), []).append(m.hwm_mib())
                return 4 * size * MiB / t / 1e6
            return run

        def curl1(_):
            drop_caches()
            return size * MiB / timed(self.net.curl("-o", "/dev/null", self.net.url(names[0]))) / 1e6

        def curl4(_):
            drop_caches()
            t = parallel([self.net.curl("-o", "/dev/null", self.net.url(nm)) for nm in names])
            return 4 * size * MiB / t / 1e6

        self.measure(label, "curl (one download)", "MB/s", curl1)
        self.measure(label, "curl ×4 parallel", "MB/s", curl4, raw=(label, "curl (one download)"))
        self.measure_mounts(label, "MB/s", ftp, raw=(label, "curl (one download)"))

    # (g) random 4 KiB preads
    def g(self):
        size = self.s["a"]
        name = self.data.big(size)
        n = self.s["g"]
        label = f"(g) {n} random 4 KiB preads in {size} MiB file, cold"

        # rclone mount (--vfs-cache-mode off) reopens a download per random read:
        # ~0.3 s each here, so it gets fewer reads (the mean per read is comparable).
        reads = {"ftpsfs": n, "rclone": min(n, RCLONE_RANDOM_READS)}

        def ftp(tool):
            def run(i):
                with self.fresh(tool) as m:
                    r = sh([sys.executable, "-c", PREAD_SCRIPT, f"{m.mnt}/{name}", str(reads[tool]), str(i)])
                return float(r.stdout.decode().strip()) * 1000
            return run

        for tool in self.tools:
            note = "no raw column" + (f"; {reads[tool]} reads" if reads[tool] != n else "")
            self.measure(label, tool, "ms/read (mean)", ftp(tool), note=note)

    # scaling: ls -l of 1k/10k/100k entries
    def scale(self):
        for n in self.s["scale"]:
            d = self.data.flat_dir(n)
            label = f"(scale) ls -l {n} entries, cold"
            hw = {}

            def ftp(tool, d=d, hw=hw):
                def run(_):
                    with self.fresh(tool) as m:
                        t = timed(f"ls -l {m.mnt}/{d} > /dev/null", shell=True)
                        hw.setdefault(tool, []).append(m.hwm_mib())
                    return t
                return run

            self.measure(label, "curl -X MLSD", "s", lambda _, d=d: self.raw_mlsd(d))
            self.measure_mounts(label, "s", ftp, raw=(label, "curl -X MLSD"))
            for tool in self.tools:
                if hw.get(tool):
                    self.res.add(f"(scale) peak RSS, ls -l {n}", tool, "MiB", hw[tool])


# ---------------------------------------------------------------------------
# (i), (k): bounded spools (spool_window=) for sequential writers


def mount_tmpfs(path, mib):
    os.makedirs(path, exist_ok=True)
    sh(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", path])
    STATE.setdefault("tmpfs", set()).add(path)


def umount_tmpfs(path):
    if os.path.ismount(path):
        subprocess.run(["umount", path], stderr=subprocess.DEVNULL)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", path], stderr=subprocess.DEVNULL)
    STATE.get("tmpfs", set()).discard(path)


def sha256_of(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


class Sampler:
    """Calls `fn` every `every` s in a thread; the largest value seen."""

    def __init__(self, fn, every=0.01):
        import threading
        self.fn, self.every, self.peak, self.stop = fn, every, 0, False
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while not self.stop:
            try:
                self.peak = max(self.peak, self.fn())
            except OSError:
                pass
            time.sleep(self.every)

    def finish(self):
        self.stop = True
        self.t.join()
        self.peak = max(self.peak, self.fn())
        return self.peak


def statfs_used(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def spool_files_used(path):
    """Bytes allocated to the spool files directly in `path` (du; holes do not count;
    the journal directory is left out)."""
    return sum(e.stat().st_blocks * 512 for e in os.scandir(path) if e.is_file())


def check_on_server(bench, name, size, want_sum):
    """After close(): the server has the whole file, byte for byte, under its name."""
    p = os.path.join(bench.data.root, name)
    got = os.path.getsize(p) if os.path.exists(p) else -1
    if got != size:
        raise RuntimeError(f"after close() the server has {got} of {size} bytes")
    if sha256_of(p) != want_sum:
        raise RuntimeError("SHA-256 on the server differs from the source")
    parts = [e.name for e in os.scandir(bench.data.root) if e.name.endswith(".part")]
    if parts:
        raise RuntimeError(f"temporary uploads left: {parts}")


def scenario_i(bench):
    """(i) a 2 GiB dd through a spool_dir on a 256 MiB tmpfs (spool_window=64M): succeeds,
    the spool's peak use (statfs of the tmpfs, sampled every 10 ms) stays within the
    window, the server has the same SHA-256; peak RSS of the daemon."""
    size_mib = 2048 if not bench.s.get("quick_i") else 512
    window = 64
    src = bench.data.local_file(size_mib)
    want = sha256_of(src)
    spool = os.path.join(STATE["work"], "spool_i")
    label = f"(i) seq write {size_mib} MiB, spool_dir on a 256 MiB tmpfs, spool_window={window}M"
    speed, peak, peak_files, rss = [], [], [], []
    mount_tmpfs(spool, 256)
    try:
        for i in range(bench.runs):
            name = f"up_i_{i}"
            with bench.net.mount(bench.mnt, spool=spool, opts=f"spool_window={window}M") as m:
                base = statfs_used(spool)
                s = Sampler(lambda: statfs_used(spool) - base)
                f = Sampler(lambda: spool_files_used(spool))
                try:
                    t = timed(["dd", f"if={src}", f"of={m.mnt}/{name}", "bs=1M"])
                finally:
                    used = s.finish()
                    used_files = f.finish()
                rss.append(m.hwm_mib())
            check_on_server(bench, name, size_mib * MiB, want)
            bench.data.rm_remote(name)
            speed.append(size_mib * MiB / t / 1e6)
            peak.append(used / MiB)
            peak_files.append(used_files / MiB)
            log(f"  {label} run {i}: {speed[-1]:.0f} MB/s, peak tmpfs use {used} B "
                f"(spool files {used_files} B), VmHWM {rss[-1]:.0f} MiB, SHA-256 equal")
            if used_files > window * MiB:
                raise RuntimeError(f"peak spool file use {used_files} B > window {window} MiB")
    finally:
        umount_tmpfs(spool)
    bench.res.add(label, "ftpsfs", "MB/s", speed, note="SHA-256 equal on the server")
    bench.res.add("(i) peak tmpfs use (statfs, spool + journal)", "ftpsfs", "MiB", peak,
                  note=f"window {window} MiB")
    bench.res.add("(i) peak spool file use (du)", "ftpsfs", "MiB", peak_files,
                  note=f"window {window} MiB")
    bench.res.add("(i) peak RSS", "ftpsfs", "MiB", rss)


def session_writing(root, marker):
    """Pids of server processes with a file whose name contains `marker` open in `root`."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
                if t.startswith(root) and marker in os.path.basename(t):
                    pids.append(int(pid))
                    break
        except OSError:
            continue
    return pids


def scenario_k(bench):
    """(k) a 1 GiB dd streamed with a bounded spool, clean vs with one cut in the middle:
    when the server's temporary file passes half the size, the proftpd session process
    writing it is killed (SIGKILL: its control and data connections are reset, what its
    socket buffers held is lost, what it wrote stays in the file). ftpsfs resumes (SIZE,
    REST + STOR from the window); dd must succeed and the SHA-256 match. Time lost = cut
    - clean."""
    size_mib = 1024
    src = bench.data.local_file(size_mib)
    want = sha256_of(src)
    label = f"(k) seq write {size_mib} MiB, spool_window=64M"
    root = os.path.realpath(bench.data.root)
    import threading

    def run(i, cut):
        name = f"up_k_{i}_{'cut' if cut else 'clean'}"
        killed = []
        done = threading.Event()

        def cutter():
            while not done.is_set():
                for e in os.scandir(root):
                    if e.name.startswith(f".{name}.") and e.name.endswith(".part"):
                        try:
                            big = e.stat().st_size >= size_mib * MiB // 2
                        except OSError:
                            big = False
                        if big:
                            for pid in session_writing(root, e.name):
                                os.kill(pid, signal.SIGKILL)
                                killed.append(pid)
                            if killed:
                                return
                time.sleep(0.005)

        th = threading.Thread(target=cutter, daemon=True) if cut else None
        with bench.net.mount(bench.mnt, opts="spool_window=64M") as m:
            if th:
                th.start()
            try:
                t = timed(["dd", f"if={src}", f"of={m.mnt}/{name}", "bs=1M"])
            finally:
                done.set()
                if th:
                    th.join()
        if cut and not killed:
            raise RuntimeError("no cut happened (the session writing the file was not found)")
        check_on_server(bench, name, size_mib * MiB, want)
        bench.data.rm_remote(name)
        return t

    clean, cut = [], []
    for i in range(bench.runs):
        clean.append(run(i, False))
        log(f"  {label} clean run {i}: {clean[-1]:.2f} s")
        cut.append(run(i, True))
        log(f"  {label} one cut, run {i}: {cut[-1]:.2f} s")
    bench.res.add(label + ", clean", "ftpsfs", "s", clean, note="SHA-256 equal")
    bench.res.add(label + ", one cut at 512 MiB", "ftpsfs", "s", cut,
                  raw=(label + ", clean", "ftpsfs"),
                  note="proftpd session killed mid-stream; resumed; SHA-256 equal")
    bench.res.add("(k) time lost to the cut", "ftpsfs", "s",
                  [c - k for c, k in zip(cut, clean)])


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(prog="tests/bench/run")
    ap.add_argument("--quick", action="store_true", help="1 run, smaller sizes")
    ap.add_argument("--rtt-ms", type=int, action="append",
                    help="RTT in ms (repeatable); default: 0 and 20")
    ap.add_argument("--runs", type=int, help="runs per scenario (default 3, --quick: 1)")
    ap.add_argument("--only", default="", help="comma-separated subset: a,b,c,d,e,f,g,scale,i,j,k")
    ap.add_argument("--no-build", action="store_true", help="skip cargo build")
    ap.add_argument("--scale", default="",
                    help="comma-separated entry counts for (scale), e.g. 1000000 (default 1k,10k,100k)")
    ap.add_argument("--no-rclone", action="store_true",
                    help="leave out the rclone mount column even when rclone is installed")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: must run as root (drop_caches, test server setup)")
    rtts = args.rtt_ms or [0, 20]
    runs = args.runs or (1 if args.quick else 3)
    only = set(filter(None, args.only.split(",")))
    t_start = time.perf_counter()
    rev = git_rev()  # of the tree that is built now (others may commit during the run)

    need = (3 if args.quick else 7) * 1024 * MiB
    free = free_bytes("/tmp")
    if free < need:
        sys.exit(f"bench: only {free / 2**30:.1f} GiB free in /tmp, need {need / 2**30:.0f} GiB")

    if not args.no_build:
        log("building release binaries")
        subprocess.run(["cargo", "build", "--release", "--bin", "ftpsfs", "--example", "test_server",
                        "--example", "delay_proxy"], cwd=REPO, check=True)

    STATE["work"] = tempfile.mkdtemp(prefix="ftpsfs-bench.", dir="/tmp")
    atexit.register(cleanup)
    # Others may rebuild target/release while we run: use private copies of the binaries
    # so that every mount of this run executes the same ftpsfs.
    global FTPSFS, TEST_SERVER, DELAY_PROXY
    bindir = os.path.join(STATE["work"], "bin")
    os.makedirs(bindir)
    copies = []
    for b in (FTPSFS, TEST_SERVER, DELAY_PROXY):
        dst = os.path.join(bindir, os.path.basename(b))
        shutil.copy2(b, dst)
        copies.append(dst)
    FTPSFS, TEST_SERVER, DELAY_PROXY = copies
    ftpsfs_sum = sh(["sha256sum", FTPSFS]).stdout.decode().split()[0][:12]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    local = os.path.join(STATE["work"], "local")
    os.makedirs(local)

    srv = Server()
    data = Data(srv, local)
    lftp_ok = check_lftp(srv)
    rclone = rclone_version() if not args.no_rclone else None
    tools = ["ftpsfs"] + (["rclone"] if rclone else [])
    os.makedirs(RESULTS_DIR, exist_ok=True)
    outputs = []
    for rtt in rtts:
        t_rtt = time.perf_counter()
        net = Net(srv, rtt)
        res = Results()
        sizes = sizes_for(args.quick, rtt)
        if args.scale:
            sizes["scale"] = [int(n) for n in args.scale.split(",") if n]
        Bench(net, data, runs, sizes, res, only, tools).run_all()
        net.stop()
        elapsed = time.perf_counter() - t_rtt
        header = (
            f"# ftpsfs benchmark, RTT {rtt} ms{' (--quick)' if args.quick else ''}\n\n"
            f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}, "
            f"git {rev} (ftpsfs binary sha256 {ftpsfs_sum}), host {os.uname().nodename}, {os.cpu_count()} CPUs\n"
            f"- server: proftpd (explicit FTPS, PROT P, TLS session reuse required) on loopback"
            f"{' via examples/delay_proxy' if rtt else ''}; measured control-channel RTT "
            f"{net.measured_rtt_ms:.2f} ms\n"
            f"- runs per scenario: {runs}; sizes: {sizes}\n"
            + (f"- extra ftpsfs mount options (BENCH_FTPSFS_OPTS): {os.environ['BENCH_FTPSFS_OPTS']}\n"
               if os.environ.get("BENCH_FTPSFS_OPTS") else "")
            + f"- lftp TLS with session reuse: {'works' if lftp_ok else 'FAILED'}; "
            f"rclone mount: {rclone + ' (defaults: --vfs-cache-mode off)' if rclone else 'not installed or --no-rclone, column skipped'}\n"
            f"- MB/s = 10^6 bytes/s; ratio = ftpsfs median / raw median in the same unit "
            f"(MB/s, files/s: >1 is faster than raw; seconds: >1 is slower than raw)\n"
            f"- this RTT took {elapsed:.0f} s\n\n"
        )
        text = header + res.table() + "\n"
        suffix = "-quick" if args.quick else ""
        path = os.path.join(RESULTS_DIR, f"{datetime.date.today().isoformat()}-rtt{rtt}{suffix}.md")
        if os.path.exists(path):
            # Never overwrite an earlier run of the same day: keep both.
            stamp = datetime.datetime.now().strftime("%H%M")
            path = path[: -len(".md")] + f"-{stamp}.md"
        with open(path, "w") as fh:
            fh.write(text)
        outputs.append((path, text))
        print(text, flush=True)
        log(f"wrote {path}")
    total = time.perf_counter() - t_start
    print(f"total run time: {total:.0f} s", flush=True)


def check_lftp(srv):
    try:
        n = Net.__new__(Net)
        n.srv, n.rtt, n.host = srv, 0, "127.0.0.1"
        sh(n.lftp("cls -l /"), timeout=60)
        return True
    except Exception as e:  # noqa: BLE001
        log(f"lftp with TLS session reuse does not work: {e}")
        return False


def rclone_version():
    if not shutil.which("rclone"):
        return None
    r = subprocess.run(["rclone", "version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = r.stdout.decode(errors="replace").splitlines()[:1]
    return first[0].strip() if first else "rclone"


def git_rev():
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL).stdout.strip()
    return r.stdout.decode().strip() + ("+dirty src" if dirty else "")


if __name__ == "__main__":
    main()
