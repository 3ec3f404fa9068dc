"""Several ``edgefleet-server run`` replicas sharing one configuration (database, signing key, tokens,
storage), each on its own port with its own ``replica_id``, optionally behind a real HAProxy.

    cluster = start_cluster(tmp_path, 2, database_url=pg_url, mqtt_port=broker.port)
    cluster.url            # HAProxy's address (devices and operators use it)
    cluster.kill(0); cluster.restart(0)
    cluster.stop()
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.haproxy import HAProxy
from tests.support.net import free_port, wait_until
from tests.support.server import RunningServer, launch, write_config


@dataclass
class Cluster:
    configs: list[Path]
    replicas: list[RunningServer]
    proxy: HAProxy | None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.proxy.url if self.proxy is not None else self.replicas[0].url

    @property
    def admin_token(self) -> str:
        return self.replicas[0].admin_token

    @property
    def enrollment_token(self) -> str:
        return self.replicas[0].enrollment_token

    @property
    def public_key_path(self) -> Path:
        return self.replicas[0].public_key_path

    def admin(self) -> dict[str, str]:
        return self.replicas[0].admin()

    def kill(self, index: int) -> None:
        self.replicas[index].kill()

    def restart(self, index: int, timeout: float = 60.0) -> RunningServer:
        """Start replica ``index`` again with its config (after kill() or stop())."""
        self.replicas[index].stop()
        self.replicas[index] = launch(self.configs[index], timeout=timeout, env=self.env)
        return self.replicas[index]

    def wait_proxy_sees(self, states: dict[str, str], timeout: float = 30.0) -> None:
        assert self.proxy is not None
        proxy = self.proxy
        wait_until(lambda: all(proxy.server_states().get(k, "").startswith(v) for k, v in states.items()), timeout)

    def logs(self) -> str:
        return "\n".join(f"--- replica-{i}\n{r.log()[-2000:]}" for i, r in enumerate(self.replicas))

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for replica in self.replicas:
            replica.stop()


def start_cluster(root: Path, replicas: int, *, database_url: str, mqtt_port: int | None = None,
                  storage: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                  overrides: dict[str, Any] | None = None, proxy: bool = True, check_ms: int = 500,
                  public_url: str | None = None, timeout: float = 60.0) -> Cluster:
    """``replicas`` servers on one database; behind HAProxy when ``proxy``. Every manifest names the proxy's
    address (``public_url``), the same whichever replica signs it."""
    shared = write_config(root / "shared", mqtt_port, database_url=database_url,
                          overrides={**({"storage": storage} if storage else {}), **(overrides or {})})
    base = yaml.safe_load(shared.read_text())
    ports = [free_port() for _ in range(replicas)]
    front = HAProxy(root, [(f"replica-{i}", "127.0.0.1", port) for i, port in enumerate(ports)],
                    check_ms=check_ms) if proxy else None
    configs = []
    for index, port in enumerate(ports):
        config = dict(base, listen=f"127.0.0.1:{port}", replica_id=f"replica-{index}",
                      public_url=public_url or (front.url if front is not None else f"http://127.0.0.1:{ports[0]}"))
        path = root / f"replica-{index}" / "server.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        configs.append(path)
    cluster = Cluster(configs=configs, replicas=[], proxy=front, env=dict(env or {}))
    try:
        # all at once, as a deployment starts them: the first migrates, the others wait on its advisory lock
        with ThreadPoolExecutor(len(configs)) as pool:
            started = [pool.submit(launch, path, timeout=timeout, env=cluster.env) for path in configs]
            for future in started:
                try:
                    cluster.replicas.append(future.result())
                except BaseException:
                    for other in started:
                        if other is not future and other.exception() is None:
                            other.result().stop()
                    raise
        if front is not None:
            front.start()
            cluster.wait_proxy_sees({f"replica-{i}": "UP" for i in range(replicas)}, timeout=timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster
