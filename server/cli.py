"""``edgefleet-server``: ``run --config FILE`` and ``init [--dir DIR]``."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from agent.errors import EdgefleetError
from agent.signing import generate_private_key, private_key_pem, public_key_pem
from server.config import load_server_config


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


def init(directory: Path, *, listen: str = "127.0.0.1:8080", mqtt_host: str = "localhost",
         mqtt_port: int = 1883, force: bool = False) -> Path:
    """Create config, database, signing key and tokens under ``directory``; return the config path."""
    directory = directory.resolve()
    config_path = directory / "server.yaml"
    if config_path.exists() and not force:
        raise EdgefleetError(f"{config_path} exists; pass --force to overwrite it")
    directory.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    _write_private(directory / "signing.key", private_key_pem(key))
    _write_file(directory / "server.pub", public_key_pem(key.public_key()), 0o644)
    config = {
        "listen": listen,
        "database_url": f"sqlite:///{directory / 'edgefleet.db'}",
        "storage": {"kind": "local", "path": str(directory / "artifacts")},
        "mqtt": {"host": mqtt_host, "port": mqtt_port},
        "signing_key": str(directory / "signing.key"),
        "admin_token": secrets.token_urlsafe(32),
        "enrollment_token": secrets.token_urlsafe(24),
        "device_classes": {},
    }
    _write_private(config_path, yaml.safe_dump(config, sort_keys=False).encode())
    from server.db import Database, migrate

    _private_database(directory / "edgefleet.db")
    db = Database(f"sqlite:///{directory / 'edgefleet.db'}")
    migrate(db.engine)
    db.dispose()
    return config_path


def run(config_path: Path) -> None:
    from server.app import create_app
    from server.serving import serve

    config = load_server_config(config_path)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port = config.listen.rpartition(":")
    if not host or not port.isdigit():
        raise EdgefleetError(f"{config_path}: listen must be HOST:PORT, not {config.listen!r}")
    serve(create_app(config), host=host, port=int(port), http=config.http, log_level=config.log_level.lower())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet-server", description="the edgefleet update server")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="serve the HTTP API and ingest telemetry")
    p_run.add_argument("--config", required=True, type=Path)
    p_init = sub.add_parser("init", help="create config, database, signing key and tokens")
    p_init.add_argument("--dir", type=Path, default=Path("/var/lib/edgefleet-server"))
    p_init.add_argument("--listen", default="127.0.0.1:8080")
    p_init.add_argument("--mqtt-host", default="localhost")
    p_init.add_argument("--mqtt-port", type=int, default=1883)
    p_init.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "init":
            path = init(args.dir, listen=args.listen, mqtt_host=args.mqtt_host, mqtt_port=args.mqtt_port,
                        force=args.force)
            print(f"config: {path}")
            print(f"server public key: {path.parent / 'server.pub'} (pin it on devices: server.public_key)")
            print("admin and enrollment tokens are in the config file (mode 0600)")
        else:
            run(args.config)
    except (EdgefleetError, OSError) as exc:
        print(f"edgefleet-server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
