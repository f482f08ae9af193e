"""A Redis Sentinel group of real processes on loopback: one primary, two replicas and three
Sentinels on free ports, with the timings the chart's HA topology uses."""

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.processes import free_port, wait_until

MASTER = "conveyor"


@dataclass
class Node:
    """One redis-server (or Sentinel) started from a config file it may rewrite."""

    name: str
    port: int
    conf: Path
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip

    def client(self, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=timeout,
                           socket_connect_timeout=timeout)  # fmt: skip

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            self.signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def role(self) -> list[object]:
        reply: list[object] = self.client().execute_command("ROLE")
        return reply


@dataclass
class SentinelGroup:
    """One primary, two replicas, three Sentinels (quorum 2)."""

    root: Path
    down_after_ms: int = 5000
    failover_timeout_ms: int = 10000
    # The isolated old primary refuses writes once no replica has acknowledged for this long.
    min_replicas_to_write: int = 1
    min_replicas_max_lag: int = 5
    redis_nodes: list[Node] = field(default_factory=list)
    sentinels: list[Node] = field(default_factory=list)

    def start(self) -> "SentinelGroup":
        server = shutil.which("redis-server")
        assert server, "redis-server must be installed (make system-deps)"
        sentinel_binary = shutil.which("redis-sentinel")
        ports = [free_port() for _ in range(3)]
        for n, port in enumerate(ports):
            data = self.root / f"redis-{n}"
            data.mkdir(parents=True)
            conf = data / "redis.conf"
            lines = [
                f"port {port}", "bind 127.0.0.1", f"dir {data}", "save ''",
                "appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction",
                f"min-replicas-to-write {self.min_replicas_to_write}",
                f"min-replicas-max-lag {self.min_replicas_max_lag}",
                "repl-diskless-sync yes", "repl-diskless-sync-delay 0",
            ]  # fmt: skip
            if n:
                lines.append(f"replicaof 127.0.0.1 {ports[0]}")
            conf.write_text("\n".join(lines) + "\n")
            self.redis_nodes.append(Node(f"redis-{n}", port, conf, [server, str(conf)],
                                         data / "redis.log"))  # fmt: skip
        for n in range(3):
            data = self.root / f"sentinel-{n}"
            data.mkdir(parents=True)
            port = free_port()
            conf = data / "sentinel.conf"
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", f"dir {data}",
                f"sentinel monitor {MASTER} 127.0.0.1 {ports[0]} 2",
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}",
                f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {MASTER} 1",
            ]) + "\n")  # fmt: skip
            argv = [sentinel_binary or server, str(conf)]
            if not sentinel_binary:
                argv.append("--sentinel")
            self.sentinels.append(Node(f"sentinel-{n}", port, conf, argv, data / "sentinel.log"))
        for node in self.redis_nodes:
            node.start()
        # Replicas first: a Sentinel learns them from the primary's INFO, which it asks for as
        # it connects and then only every 10 s; started together, it met the replicas late.
        self.wait_replicas(self.redis_nodes[0], 2)
        for node in self.sentinels:
            node.start()
        wait_until(self._settled, 60, "the Sentinels to see 2 replicas and each other", step=0.2)
        return self

    def _settled(self) -> bool:
        try:
            for sentinel in self.sentinels:
                info = sentinel.client().sentinel_master(MASTER)
                if int(info["num-slaves"]) < 2 or int(info["num-other-sentinels"]) < 2:
                    return False
            return True
        except redis.RedisError:
            return False

    def addresses(self) -> str:
        """CONVEYOR_REDIS_SENTINEL__ADDRESSES."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def primary_port(self) -> int | None:
        """The primary the Sentinels agree on (None while they disagree or none answers)."""
        answers = set()
        for sentinel in self.sentinels:
            if not sentinel.alive():
                continue
            try:
                reply = sentinel.client().sentinel_get_master_addr_by_name(MASTER)
            except redis.RedisError:
                return None
            answers.add(int(reply[1]))
        return answers.pop() if len(answers) == 1 else None

    def primary(self) -> Node:
        port = wait_until(self.primary_port, 30, "the Sentinels to agree on a primary")
        return next(node for node in self.redis_nodes if node.port == port)

    def wait_new_primary(self, old: Node, timeout: float = 60) -> Node:
        """The node the Sentinels promoted instead of `old`, once it says it is master."""

        def promoted() -> Node | None:
            port = self.primary_port()
            if port is None or port == old.port:
                return None
            node = next(n for n in self.redis_nodes if n.port == port)
            try:
                return node if node.role()[0] == "master" else None
            except redis.RedisError:
                return None

        node: Node = wait_until(promoted, timeout, "a failover", step=0.05)
        return node

    def wait_replica_of(self, node: Node, primary: Node, timeout: float = 60) -> None:
        """`node` replicates from `primary`, link up."""

        def linked() -> bool:
            try:
                role = node.role()
            except redis.RedisError:
                return False
            linked_to = int(str(role[2])) if role[0] == "slave" else 0
            return linked_to == primary.port and role[3] == "connected"

        wait_until(linked, timeout, f"{node.name} to replicate from {primary.name}", step=0.1)

    def wait_replicas(self, primary: Node, count: int, timeout: float = 60) -> None:
        """`primary` has `count` replicas online."""

        def online() -> bool:
            try:
                info = primary.client().info("replication")
            except redis.RedisError:
                return False
            return sum(1 for k, v in info.items()
                       if k.startswith("slave") and isinstance(v, dict)
                       and v.get("state") == "online") >= count  # fmt: skip

        wait_until(online, timeout, f"{count} replicas online on {primary.name}", step=0.1)

    def stop(self) -> None:
        for node in [*self.sentinels, *self.redis_nodes]:
            node.stop()


def sentinel_client(group: SentinelGroup) -> redis.Redis:
    """A client of whichever node is primary now (for the test's own reads)."""
    from redis.sentinel import Sentinel

    sentinel = Sentinel([("127.0.0.1", s.port) for s in group.sentinels],
                        sentinel_kwargs={"socket_timeout": 1})  # fmt: skip
    client: redis.Redis = sentinel.master_for(MASTER, socket_timeout=2, decode_responses=True)
    return client
