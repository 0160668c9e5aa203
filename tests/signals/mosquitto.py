"""A real Mosquitto on a free loopback port, for the MQTT tests and the benchmark.

Each instance writes its own config into a work directory, starts ``mosquitto -c``,
waits until the port accepts connections, and stops the process on ``stop()``. With
``users`` it also writes a password file (``mosquitto_passwd -b -c``) and an ACL and
turns anonymous access off, like ``config/mosquitto.conf`` does in production.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

SEARCH = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/opt/homebrew/sbin")


class MosquittoMissing(RuntimeError):
    pass


def find_binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SEARCH))
    if path is None:
        raise MosquittoMissing(
            f"{name} not found (looked on PATH and in {', '.join(SEARCH)}); the MQTT tests "
            "need a real broker: apt-get install mosquitto (Debian/Ubuntu) or "
            "brew install mosquitto"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mosquitto:
    """One broker process. ``users`` maps user -> password; ``acl`` is ACL file text."""

    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None,
                 acl: str | None = None, port: int | None = None,
                 template: Path | None = None) -> None:
        self.binary = find_binary("mosquitto")
        self.workdir = workdir
        self.users = users
        self.acl = acl
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"
        # A production config (config/mosquitto.conf) to run with its port and file paths
        # moved into the work directory.
        self.template = template

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "set_tcp_nodelay true",
            # The fuzz test and the benchmark publish faster than a subscriber can take
            # at times; the default queue of 1000 messages per client would drop some.
            "max_queued_messages 0",
            "max_inflight_messages 1000",
            "user root" if os.geteuid() == 0 else "",
        ]
        passwd, acl = self.workdir / "passwd", self.workdir / "acl"
        if self.users is not None:
            passwd.unlink(missing_ok=True)
            tool = find_binary("mosquitto_passwd")
            for i, (user, password) in enumerate(self.users.items()):
                flags = ["-b", "-c"] if i == 0 else ["-b"]
                subprocess.run([tool, *flags, str(passwd), user, password], check=True,
                               capture_output=True)
        if self.acl is not None:
            acl.write_text(self.acl)
        if self.template is not None:
            text = self.template.read_text()
            text = re.sub(r"^listener 1883 127\.0\.0\.1$", lines[0], text, flags=re.M)
            text = re.sub(r"^password_file .*$", f"password_file {passwd}", text, flags=re.M)
            text = re.sub(r"^acl_file .*$", f"acl_file {acl}", text, flags=re.M)
            lines = [text, *lines[1:3], "user root" if os.geteuid() == 0 else ""]
        elif self.users is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {passwd}"]
            if self.acl is not None:
                lines.append(f"acl_file {acl}")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(line for line in lines if line) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> None:
        conf = self._config()
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}"
                                   f"{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.port), timeout=0.2):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
