# PYTHON_ARGCOMPLETE_OK
"""edgefleet-server: run the update server, initialise its config, database and keys, or rotate its signing key.

Exit codes: 0 success, 1 cannot start or run (an address taken, the database unreachable),
2 usage or config error (systemd does not restart on it: RestartPreventExitStatus=2), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import secrets
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from edgefleet.agent.errors import ConfigError, EdgefleetError, ListenError
from edgefleet.agent.logsetup import configure_logging
from edgefleet.agent.signing import generate_private_key, private_key_pem, public_key_pem
from edgefleet.agent.version import version_line
from edgefleet.server.config import ServerConfig, load_server_config

log = logging.getLogger("edgefleet.server.cli")

# The packaged layout (systemd/edgefleet-server.service, systemd/edgefleet.tmpfiles): config and keys
# in /etc/edgefleet-server, database and artifacts in /var/lib/edgefleet-server, run as edgefleet-server.
CONFIG_DIR = Path("/etc/edgefleet-server")
DATA_DIR = Path("/var/lib/edgefleet-server")
SERVICE_USER = "edgefleet-server"


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` anew with exactly ``mode``, whatever was there: a new file (O_EXCL|O_NOFOLLOW, then an
    explicit fchmod, so neither the umask nor an old file's mode counts) renamed over it. A symlink at
    ``path`` is replaced itself; its target is never written."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_private(path: Path, data: bytes) -> None:
    _write_file(path, data, 0o600)


def _private_database(path: Path) -> None:
    """Create the SQLite file 0600 (or make an existing one 0600) before SQLite opens it; never through a link."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if path.is_symlink():
            raise EdgefleetError(f"{path} is a symbolic link; refusing to use it as the database") from exc
        raise
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.is_file() and not side.is_symlink():
            side.chmod(0o600)


def default_owner() -> str | None:
    """The service user when root initialises the packaged layout and that user exists (sysusers.d)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return SERVICE_USER


def _chown(paths: list[Path], owner: str) -> None:
    try:
        user = pwd.getpwnam(owner)
    except KeyError:
        raise EdgefleetError(f"--owner {owner}: no such user (create it with systemd-sysusers)") from None
    for path in paths:
        os.chown(path, user.pw_uid, user.pw_gid)


def init(directory: Path, *, data_dir: Path | None = None, listen: str = "127.0.0.1:8080",
         mqtt_host: str = "localhost", mqtt_port: int = 1883, force: bool = False,
         owner: str | None = None) -> Path:
    """Create config, signing key and tokens under ``directory`` and the database and artifact
    store under ``data_dir`` (default: ``directory``); return the config path."""
    directory = directory.resolve()
    data_dir = (data_dir or directory).resolve()
    config_path = directory / "server.yaml"
    if config_path.exists() and not force:
        raise EdgefleetError(f"{config_path} exists; pass --force to overwrite it")
    directory.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    _write_private(directory / "signing.key", private_key_pem(key))
    _write_file(directory / "server.pub", public_key_pem(key.public_key()), 0o644)
    from edgefleet.server.trust import ServerTrust

    ServerTrust(directory / "signing.key").ensure_initial()  # trust/root/1.root.json: provision it on devices
    database = data_dir / "edgefleet.db"
    config = {
        "listen": listen,
        "database_url": f"sqlite:///{database}",
        "storage": {"kind": "local", "path": str(data_dir / "artifacts")},
        "mqtt": {"host": mqtt_host, "port": mqtt_port},
        "signing_key": str(directory / "signing.key"),
        "admin_token": secrets.token_urlsafe(32),
        "enrollment_token": secrets.token_urlsafe(24),
        "device_classes": {},
    }
    _write_private(config_path, yaml.safe_dump(config, sort_keys=False).encode())
    from edgefleet.server.db import Database, migrate

    _private_database(database)
    db = Database(f"sqlite:///{database}")
    migrate(db.engine)
    db.dispose()
    if owner:
        trust = directory / "trust"
        _chown([config_path, directory / "signing.key", directory / "server.pub", data_dir, database, trust,
                *sorted(trust.rglob("*"))], owner)
    return config_path


def bind(listen: str) -> socket.socket:
    """The listening socket for ``listen`` (HOST:PORT), bound before anything else starts."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise ListenError.from_os_error(listen, exc, "listen") from exc
    sock.set_inheritable(True)
    return sock


def run(config_path: Path) -> None:
    config = load_server_config(config_path)
    configure_logging(config.log_level, config.log.format)
    serve(config)


def serve(config: ServerConfig) -> None:
    sock = bind(config.listen)  # first: a taken address is one line before anything else starts
    try:
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin at every start
        from edgefleet.server.app import create_app
        from edgefleet.server.serving import serve_on

        if not serve_on(create_app(config), sock, http=config.http, log_level=config.log_level.lower()):
            raise EdgefleetError("the server did not start (its reason is logged above)")
    finally:
        sock.close()


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog="edgefleet-server", description=doc.split("\n")[0],
                                     epilog=doc.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_line("edgefleet-server"),
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    p_run = sub.add_parser("run", help="serve the HTTP API and ingest telemetry")
    p_run.add_argument("--config", required=True, type=Path, metavar="FILE",
                       help=f"server YAML config (the unit uses {CONFIG_DIR / 'server.yaml'})")
    p_init = sub.add_parser("init", help="create config, database, signing key and tokens",
                            description="Create config, signing key and tokens (secrets mode 0600), the database "
                                        "and the artifact store.")
    p_init.add_argument("--dir", type=Path, metavar="DIR",
                        help=f"put everything under DIR (default: config and keys in {CONFIG_DIR}, "
                             f"database and artifacts in {DATA_DIR})")
    p_init.add_argument("--data-dir", type=Path, metavar="DIR",
                        help=f"database and artifacts here (default: --dir when given, else {DATA_DIR})")
    p_init.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                        help="address the server listens on (default: %(default)s)")
    p_init.add_argument("--mqtt-host", default="localhost", metavar="HOST",
                        help="MQTT broker host (default: %(default)s)")
    p_init.add_argument("--mqtt-port", type=int, default=1883, metavar="PORT",
                        help="MQTT broker port (default: %(default)s)")
    p_init.add_argument("--owner", metavar="USER",
                        help=f"chown the files to USER (default when run as root and the user exists: "
                             f"{SERVICE_USER}; '' for nobody)")
    p_init.add_argument("--force", action="store_true", help="overwrite an existing config, key and tokens")
    p_rot = sub.add_parser("rotate-key", help="a new signing key and root of trust version, signed by the old and new")
    p_rot.add_argument("--config", required=True, type=Path, metavar="FILE", help="server YAML config")
    p_rot.add_argument("--sign-with", action="append", type=Path, default=[], metavar="KEYFILE",
                       help="an offline root key (PEM) to sign the new root with; repeat for a threshold")
    p_rot.add_argument("--add-key", action="append", type=Path, default=[], metavar="PUBFILE",
                       help="list this public key (PEM) as a root key of the new root")
    p_rot.add_argument("--revoke", action="append", default=[], metavar="KEYID",
                       help="drop this root key (id or a prefix of 8+ hex digits) from the new root")
    p_rot.add_argument("--threshold", type=int, default=None, metavar="K",
                       help="root keys needed to sign the next root")
    return parser


def rotate_key(config_path: Path, *, sign_with: list[Path], add_keys: list[Path], revoke: list[str],
               threshold: int | None) -> str:
    """``rotate-key``: a new online key and root version; returns the lines to print."""
    from edgefleet.server.trust import ServerTrust, rotate

    config = load_server_config(config_path)
    trust = ServerTrust(config.signing_key, config.trust_dir)
    root = rotate(trust, sign_with=sign_with, add_keys=add_keys, revoke=revoke, threshold=threshold)
    signed = root.signed
    role = signed["roles"]["root"]
    return (f"root version {signed['version']}: {trust.roots_dir / (str(signed['version']) + '.root.json')}\n"
            f"online key {signed['roles']['manifest']['keyids'][0][:16]} in {config.signing_key} (the old one is "
            f"overwritten)\nroot keys {', '.join(k[:16] for k in role['keyids'])}, threshold {role['threshold']}\n"
            "running servers sign with the new key within a second; devices follow the chain at their next check-in")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        import argcomplete

        argcomplete.autocomplete(parser)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    try:
        if args.cmd == "init":
            directory = args.dir or CONFIG_DIR
            data_dir = args.data_dir or (args.dir if args.dir else DATA_DIR)
            owner = default_owner() if args.owner is None else (args.owner or None)
            path = init(directory, data_dir=data_dir, listen=args.listen, mqtt_host=args.mqtt_host,
                        mqtt_port=args.mqtt_port, force=args.force, owner=owner)
            print(f"config: {path}")
            print(f"root of trust: {path.parent / 'trust' / 'root' / '1.root.json'} (provision it on devices: "
                  f"server.root; or pin {path.parent / 'server.pub'} as server.public_key)")
            print("admin and enrollment tokens are in the config file (mode 0600)")
        elif args.cmd == "rotate-key":
            print(rotate_key(args.config, sign_with=args.sign_with, add_keys=args.add_key, revoke=args.revoke,
                             threshold=args.threshold))
        else:
            run(args.config)
    except ConfigError as exc:
        print(f"edgefleet-server: {exc}", file=sys.stderr)
        return 2
    except (EdgefleetError, OSError) as exc:
        print(f"edgefleet-server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line; the traceback only at DEBUG
        log.debug("cannot start", exc_info=True)
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"edgefleet-server: cannot start: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
