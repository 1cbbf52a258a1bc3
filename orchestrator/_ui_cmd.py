"""``slimtune ui``: serve the MLflow UI on a search's store.

Bound to 127.0.0.1 by default. ``--host NAME`` with another name serves that address, and MLflow's
Host-header protection allows that name only (``--allowed-hosts NAME:PORT``, never ``*``, which
would turn the protection off); slimtune says plainly that the server is then reachable from
other machines. The store, the port and the host are checked before the server starts.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import socket
import sys
from pathlib import Path

from searchspace import ConfigError, redact_uri

# Addresses that bind all interfaces: the server is reachable under every name of the machine.
_ANY = frozenset({"0.0.0.0", "::", ""})


def add_ui_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    u = sub.add_parser("ui", help="serve the MLflow UI on this directory's records")
    u.add_argument("--tracking-uri", help="MLflow store (default: ./mlflow.db)")
    u.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only); another name makes the "
        "UI reachable from other machines under that name only",
    )
    u.add_argument("--port", type=int, default=5000)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, port: int) -> list[str]:
    """The Host headers the server accepts when bound to ``host`` (not a loopback address)."""
    if host in _ANY:
        names = [socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1"]
    else:
        names = [host]
    out: list[str] = []
    for name in dict.fromkeys(n for n in names if n):
        shown = f"[{name}]" if ":" in name else name
        out.append(f"{shown}:{port}")
        if port == 80:
            out.append(shown)
    return out


def server_command(exe: str, uri: str, host: str, port: int) -> tuple[list[str], str | None]:
    """``mlflow server``'s argv, and what to tell the user about who can reach it."""
    cmd = [exe, "server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if is_loopback(host):
        return cmd, None
    allowed = allowed_hosts(host, port)
    cmd += ["--allowed-hosts", ",".join(allowed)]
    notice = (
        f"slimtune: WARNING: the UI listens on {host or 'every address'}:{port} and is "
        f"REACHABLE FROM OTHER MACHINES (no login: anyone who can reach it can read and change "
        f"the records); it answers requests for {', '.join(allowed)} only. Use the default "
        "--host 127.0.0.1 (with an SSH tunnel) to keep it on this machine."
    )
    return cmd, notice


def check_address(host: str, port: int) -> None:
    """The port is in range and free on ``host``, and ``host`` is an address of this machine."""
    if not 1 <= port <= 65535:
        raise ConfigError(
            field="--port",
            value=port,
            rule="a TCP port is a whole number in [1, 65535]",
            fix="pass a free port, e.g. --port 5000",
        )
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(
            field="--host",
            value=host,
            rule=f"the name does not resolve ({exc.strerror or exc})",
            fix="pass an address or name of this machine, or leave --host out (127.0.0.1)",
        ) from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            in_use = exc.errno == 98  # EADDRINUSE
            raise ConfigError(
                field="--port" if in_use else "--host",
                value=port if in_use else host,
                rule=f"cannot serve on {host}:{port} ({exc.strerror or exc})",
                fix="pass another --port (a free one)"
                if in_use
                else "pass an address of this machine, or leave --host out (127.0.0.1)",
            ) from None


def run_ui(args: argparse.Namespace) -> int:
    from orchestrator._store import existing_store

    uri = existing_store(args.tracking_uri, Path.cwd())
    check_address(args.host, args.port)
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    cmd, notice = server_command(exe, uri, args.host, args.port)
    if notice is not None:
        print(notice, file=sys.stderr)
    print(f"MLflow UI for {redact_uri(uri)} at http://{args.host}:{args.port}", flush=True)
    print(
        "  (pick 'Model training' at the top left of an experiment to see its runs, Pareto tags "
        "and charts)",
        flush=True,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, cmd)  # the server replaces this process: signals and exit codes are its own
