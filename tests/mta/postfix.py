"""A private Postfix instance and Postfix's smtp-sink for the MTA tests (never the system one).

``PrivatePostfix(root, ...)`` writes a config_directory, queue_directory and data_directory
under ``root`` and runs ``postfix -c CONF start`` / ``stop``. Its main.cf is the environment
of a test host (loopback only, no DNS, the "world" is an smtp-sink) followed by
``deploy/postfix/main.cf`` as shipped, with only the paths substituted; its master.cf is
Debian's default with the public ``smtp inet`` entry and listserv's listener taken from
``deploy/postfix/master.cf``, with only the ports substituted. relay_domains, transport and
header_checks come from the ``*.example`` files the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "postfix"
MASTER_DIST = [Path("/usr/share/postfix/master.cf.dist"), Path("/etc/postfix/master.cf.proto")]
LIST_DOMAIN = "lists.example.org"


def have_postfix() -> bool:
    return bool(shutil.which("postfix") and shutil.which("smtp-sink")
                and any(p.exists() for p in MASTER_DIST))


def open_path(path: Path) -> None:
    """Postfix daemons run as the postfix user and open maps and the verify cache by absolute
    path: let it traverse (not list) ``path`` (mkdtemp makes it 0700)."""
    mode = path.stat().st_mode
    if mode & 0o011 != 0o011:
        os.chmod(path, mode | 0o011)


def entries(text: str) -> list[str]:
    """master.cf entries (a line plus its indented continuation lines), comments dropped."""
    out: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and out:
            out[-1] += "\n" + line
        else:
            out.append(line)
    return out


class SmtpSink:
    """``smtp-sink`` on 127.0.0.1:PORT, dumping every transaction to a file in ``dump``
    (X-Mail-Args / X-Rcpt-Args lines with the envelope, then the message); ``options`` such
    as ``["-f", "RCPT", "-B", "550 5.1.1 no such user"]`` make it refuse."""

    def __init__(self, root: Path, port: int, options: list[str] | None = None) -> None:
        self.dump = root
        self.dump.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dump, "postfix")
        self.port = port
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "postfix", *(options or []), "-d", f"{self.dump}/m.",
             f"127.0.0.1:{port}", "100"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def files(self) -> list[Path]:
        return sorted(self.dump.glob("m.*"), key=lambda p: (p.stat().st_mtime, p.name))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class PrivatePostfix:
    def __init__(self, root: Path, *, public_port: int, outbound_port: int, lmtp_port: int,
                 world_port: int, extra_transport: str = "") -> None:
        self.root = root
        self.conf = root / "conf"
        self.queue = root / "queue"
        self.data = root / "data"
        self.log = root / "maillog"
        for d in (self.conf, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        open_path(root)
        self.public_port = public_port
        self.outbound_port = outbound_port
        self.lmtp_port = lmtp_port
        self.world_port = world_port
        self.extra_transport = extra_transport
        self.running = False

    # -- configuration -------------------------------------------------------------------
    def paths(self, text: str) -> str:
        return text.replace("/etc/postfix/", f"{self.conf}/")

    def main_cf(self) -> str:
        env = f"""# The test host (what a real host's main.cf already has), then deploy/postfix/main.cf.
compatibility_level = 3.6
config_directory = {self.conf}
queue_directory = {self.queue}
data_directory = {self.data}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.test.example
mydomain = test.example
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
# tests act as a client outside mynetworks with XCLIENT ADDR=...
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
# the "world": every other destination is an smtp-sink on loopback
relayhost = [127.0.0.1]:{self.world_port}
maillog_file_prefixes = {self.root}
maillog_file = {self.log}
biff = no
delay_warning_time = 0
queue_run_delay = 60s
minimal_backoff_time = 60s
maximal_backoff_time = 120s
"""
        return env + "\n" + self.paths((DEPLOY / "main.cf").read_text())

    def master_cf(self) -> str:
        dist = next(p for p in MASTER_DIST if p.exists()).read_text()
        deploy = entries((DEPLOY / "master.cf").read_text())
        public = [e for e in deploy if re.match(r"smtp\s+inet\s", e)]
        listener = [e for e in deploy if e.startswith("127.0.0.1:10025 ")]
        assert len(public) == 1 and len(listener) == 1, "deploy/postfix/master.cf changed shape"
        out = []
        for e in entries(dist):
            if re.match(r"smtp\s+inet\s", e):
                continue                      # replaced by the deploy entry below
            # in this test instance nothing runs chrooted (the queue directory has no /etc)
            out.append(_no_chroot(e))
        out.append(_no_chroot(re.sub(r"^smtp(\s+inet)", rf"127.0.0.1:{self.public_port}\1",
                                     public[0])))
        out.append(_no_chroot(listener[0].replace("127.0.0.1:10025 ",
                                                  f"127.0.0.1:{self.outbound_port} ")))
        return "\n".join(out) + "\n"

    def tables(self) -> dict[str, str]:
        transport = (DEPLOY / "transport.example").read_text().replace(
            "lmtp:inet:127.0.0.1:8024", f"lmtp:inet:127.0.0.1:{self.lmtp_port}")
        return {
            "relay_domains": (DEPLOY / "relay_domains.example").read_text(),
            "transport": transport + self.extra_transport,
            "header_checks": (DEPLOY / "header_checks.example").read_text().replace(
                r"mx\.example\.org", r"mx\.test\.example"),
        }

    def write(self) -> None:
        (self.conf / "main.cf").write_text(self.main_cf())
        (self.conf / "master.cf").write_text(self.master_cf())
        for name, text in self.tables().items():
            (self.conf / name).write_text(text)
        for name in ("relay_domains", "transport"):
            self.run("postmap", f"hash:{self.conf / name}")

    # -- running -------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MAIL_CONFIG": str(self.conf)}
        p = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout}{p.stderr}"
                                 f"\n{self.maillog()[-3000:]}")
        return p

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("postfix", "-c", str(self.conf), *args, check=check)

    def start(self) -> None:
        self.write()
        self.postfix("check")
        self.postfix("start")
        self.running = True
        wait_until(lambda: _listening(self.public_port) and _listening(self.outbound_port), 30,
                   "postfix to listen")

    def stop(self) -> None:
        if self.running:
            if self.postfix("stop", check=False).returncode != 0:
                self.postfix("abort", check=False)
            self.running = False

    def flush(self) -> None:
        """``postqueue -f``: try every deferred message now."""
        self.run("postqueue", "-c", str(self.conf), "-f")

    def queue_ids(self) -> list[str]:
        """Ids of the messages in the queue (``postqueue -j``)."""
        out = self.run("postqueue", "-c", str(self.conf), "-j").stdout
        return re.findall(r'"queue_id":\s*"([0-9A-Za-z]+)"', out)

    def maillog(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _no_chroot(entry: str) -> str:
    head, sep, rest = entry.partition("\n")
    f = head.split()
    if len(f) >= 8 and f[4] in ("y", "-"):
        f[4] = "n"
        head = " ".join(f)
    return head + sep + rest


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False
