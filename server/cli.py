"""``edgefleet-server``: ``run --config FILE``, ``init [--dir DIR]`` and ``rotate-key --config FILE``."""

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


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


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
    (directory / "server.pub").write_bytes(public_key_pem(key.public_key()))
    from server.trust import ServerTrust

    ServerTrust(directory / "signing.key").ensure_initial()  # trust/root/1.root.json: provision it on devices
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

    db = Database(f"sqlite:///{directory / 'edgefleet.db'}")
    migrate(db.engine)
    db.dispose()
    return config_path


def run(config_path: Path) -> None:
    import uvicorn

    from server.app import create_app

    config = load_server_config(config_path)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port = config.listen.rpartition(":")
    if not host or not port.isdigit():
        raise EdgefleetError(f"{config_path}: listen must be HOST:PORT, not {config.listen!r}")
    uvicorn.run(create_app(config), host=host, port=int(port), log_level=config.log_level.lower(),
                access_log=False)


def rotate_key(config_path: Path, *, sign_with: list[Path], add_keys: list[Path], revoke: list[str],
               threshold: int | None) -> str:
    """``rotate-key``: a new online key and root version; returns the lines to print."""
    from server.trust import ServerTrust, rotate

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
    p_rot = sub.add_parser("rotate-key", help="a new signing key and root of trust version, signed by the old and new")
    p_rot.add_argument("--config", required=True, type=Path)
    p_rot.add_argument("--sign-with", action="append", type=Path, default=[], metavar="KEYFILE",
                       help="an offline root key (PEM) to sign the new root with; repeat for a threshold")
    p_rot.add_argument("--add-key", action="append", type=Path, default=[], metavar="PUBFILE",
                       help="list this public key (PEM) as a root key of the new root")
    p_rot.add_argument("--revoke", action="append", default=[], metavar="KEYID",
                       help="drop this root key (id or a prefix of 8+ hex digits) from the new root")
    p_rot.add_argument("--threshold", type=int, default=None, help="root keys needed to sign the next root")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "init":
            path = init(args.dir, listen=args.listen, mqtt_host=args.mqtt_host, mqtt_port=args.mqtt_port,
                        force=args.force)
            print(f"config: {path}")
            print(f"root of trust: {path.parent / 'trust' / 'root' / '1.root.json'} (provision it on devices: "
                  f"server.root; or pin {path.parent / 'server.pub'} as server.public_key)")
            print("admin and enrollment tokens are in the config file (mode 0600)")
        elif args.cmd == "rotate-key":
            print(rotate_key(args.config, sign_with=args.sign_with, add_keys=args.add_key, revoke=args.revoke,
                             threshold=args.threshold))
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
