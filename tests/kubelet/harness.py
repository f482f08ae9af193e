"""A kubelet on one machine: the pods a rendered chart describes, run as local processes.

There is no cluster here, so this plays the parts a cluster would, as faithfully as a single
host allows, and no more:

- the API server: the rendered objects; Secrets marked `helm.sh/resource-policy: keep` keep
  their data across re-renders, as the chart's `lookup` keeps them in a cluster;
- the kubelet: each container's `command`/`args` (or the image's ENTRYPOINT, read from the
  Dockerfile, with `args`), its `env` and `envFrom` resolved from the rendered ConfigMaps and
  Secrets (`$(VAR)` references expanded), its Secret/ConfigMap volumes written as files and
  kept in sync, its emptyDirs and PVCs as directories; probes exactly as rendered (httpGet,
  tcpSocket, exec); stopping a pod as the kubelet does: preStop, then SIGTERM to the
  container's main process, then SIGKILL of everything in it once
  `terminationGracePeriodSeconds` (counted from the start of preStop) has passed;
- the pod network: a pod's ports are its own in Kubernetes; here each pod gets free local
  ports for its container ports (the settings naming them are pointed there), its mount
  paths become directories of its own, and Service names resolve to the local address of a
  backing pod;
- the Deployment controller's rolling update (maxSurge/maxUnavailable as rendered) and a
  ReplicaSet scale-down; and, for client traffic, a Service proxy that sends each new
  connection to a ready endpoint, with endpoint removal lagging a pod's termination.
"""

import base64
import contextlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import httpx
import yaml

from tests.support.processes import REPO, free_port, wait_until

CHART = REPO / "charts" / "conveyor"
KEEP = "helm.sh/resource-policy"

# Container ports whose number a Conveyor setting names; the local port is set through it.
PORT_SETTINGS = {
    9808: "CONVEYOR_METRICS__WORKER_PORT",
    9809: "CONVEYOR_METRICS__BEAT_PORT",
    9810: "CONVEYOR_METRICS__EXPORTER_PORT",
    9811: "CONVEYOR_METRICS__API_PORT",
}


def _dockerfile() -> tuple[list[str], dict[str, str]]:
    """The image's ENTRYPOINT and ENV (PATH aside), as the container runtime applies them."""
    text = (REPO / "Dockerfile").read_text()
    runtime = text[text.rindex("FROM ") :]
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", runtime, re.M).group(1))  # type: ignore[union-attr]
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV ((?:.*\\\n)*.*)$", runtime, re.M):
        for name, value in re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " ")):
            if name != "PATH":
                env[name] = value
    return entrypoint, env


ENTRYPOINT, IMAGE_ENV = _dockerfile()

# The image's binaries, as found on this machine.
BINARIES = {
    "conveyor": str(Path(sys.executable).with_name("conveyor")),
    "python": sys.executable,
    "sh": "/bin/sh",
    "sleep": shutil.which("sleep") or "/bin/sleep",
    "redis-server": shutil.which("redis-server") or "redis-server",
    "redis-cli": shutil.which("redis-cli") or "redis-cli",
}


def render(values: dict[str, Any], name: str = "conveyor", namespace: str = "jobs") -> list[dict]:
    """Every manifest the chart renders for `values`."""
    out = helm_python.Chart.load(str(CHART)).render(values, name=name, namespace=namespace)
    return [
        d
        for p, t in sorted(out.items())
        if p.endswith((".yaml", ".yml"))
        for d in yaml.safe_load_all(t)
        if d
    ]


def template_hash(template: dict[str, Any]) -> str:
    """Identity of a pod template: a change of it is what rolls a Deployment."""
    return json.dumps(template, sort_keys=True)


class Cluster:
    """The objects the API server holds, updated by `apply` as `helm upgrade` would."""

    def __init__(self, docs: list[dict]) -> None:
        self.docs: list[dict] = []
        self.secrets: dict[str, dict[str, bytes]] = {}
        self.config_maps: dict[str, dict[str, str]] = {}
        self.apply(docs)

    def apply(self, docs: list[dict]) -> None:
        """Take a new render; kept Secrets keep their data (what `lookup` gives the chart)."""
        self.docs = docs
        for doc in docs:
            name = doc["metadata"]["name"]
            if doc["kind"] == "ConfigMap":
                self.config_maps[name] = dict(doc.get("data") or {})
            elif doc["kind"] == "Secret":
                keep = (doc["metadata"].get("annotations") or {}).get(KEEP) == "keep"
                if keep and name in self.secrets:
                    continue
                data = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}
                data |= {k: v.encode() for k, v in (doc.get("stringData") or {}).items()}
                self.secrets[name] = data

    def workload(self, name: str) -> dict[str, Any]:
        """The Deployment, StatefulSet or bare Pod called `name`, as a workload with a pod
        template."""
        doc = next(
            d
            for d in self.docs
            if d["kind"] in ("Deployment", "StatefulSet", "Pod") and d["metadata"]["name"] == name
        )
        if doc["kind"] == "Pod":
            return {"spec": {"template": {"metadata": doc["metadata"], "spec": doc["spec"]}}}
        return doc

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]


@dataclass
class Pod:
    """One running pod: its template, directory, local ports and main process."""

    name: str
    owner: str
    template: dict[str, Any]
    root: Path
    ports: dict[int, int]
    env: dict[str, str]
    mounts: dict[str, Path]
    process: subprocess.Popen[bytes]
    log_path: Path
    terminating: bool = False
    exit_code: int | None = None
    stopped_after: float | None = None
    killed: bool = False

    @property
    def spec(self) -> dict[str, Any]:
        return self.template["spec"]

    @property
    def container(self) -> dict[str, Any]:
        return self.spec["containers"][0]

    def port(self, ref: int | str) -> int:
        """The local port of a container port, by number or name."""
        if isinstance(ref, str):
            ref = next(p["containerPort"] for p in self.container["ports"] if p["name"] == ref)
        return self.ports[ref]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def probe(self, kind: str) -> bool:
        """Run the container's `kind` probe once, as rendered (absent: success)."""
        probe = self.container.get(kind)
        if probe is None:
            return True
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                url = f"http://127.0.0.1:{self.port(get['port'])}{get.get('path', '/')}"
                return 200 <= httpx.get(url, timeout=timeout).status_code < 400
            if "tcpSocket" in probe:
                with socket.create_connection(
                    ("127.0.0.1", self.port(probe["tcpSocket"]["port"])), timeout=timeout
                ):
                    return True
            if "exec" in probe:
                argv = _pod_network(
                    _localize(probe["exec"]["command"], self.mounts, self.env), self.ports
                )
                done = subprocess.run(
                    argv, env=self.env, capture_output=True, timeout=timeout, cwd=self.root
                )
                return done.returncode == 0
        except (httpx.HTTPError, OSError, subprocess.TimeoutExpired):
            return False
        raise AssertionError(f"unknown probe {probe}")

    def alive(self) -> bool:
        return self.process.poll() is None


class Kubelet:
    """Starts and stops pods of a `Cluster` on this machine."""

    def __init__(self, cluster: Cluster, root: Path) -> None:
        self.cluster = cluster
        self.root = root
        self.pods: list[Pod] = []
        self._names = itertools.count()
        # Called with ("ready" | "terminating", pod): what the endpoints controller watches.
        self.watchers: list[Callable[[str, Pod], None]] = []
        # PersistentVolumeClaims by "<owner>/<claim>": they outlive the pods that mount them.
        self.claims: dict[str, Path] = {}

    # -- starting -------------------------------------------------------------------------

    def start(self, owner: str, template: dict[str, Any] | None = None) -> Pod:
        """Run one pod of the Deployment/StatefulSet `owner` (its current template unless one
        is given), without waiting for it to be ready."""
        workload = self.cluster.workload(owner)
        template = template or workload["spec"]["template"]
        index = next(self._names)
        name = f"{owner}-{index}"
        root = self.root / name
        root.mkdir(parents=True)
        container = template["spec"]["containers"][0]
        ports = {p["containerPort"]: free_port() for p in container.get("ports", [])}
        mounts = self._volumes(owner, workload, template["spec"], container, root)
        env = self._environment(name, container, mounts, ports)
        # `command` replaces the image's ENTRYPOINT; `args` follow either.
        command = container.get("command") or ENTRYPOINT
        argv = _pod_network(_localize([*command, *container.get("args", [])], mounts, env), ports)
        argv = [self._resolve_services(a) for a in argv]
        log_path = root / "container.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=root,
            )
        pod = Pod(name, owner, template, root, ports, env, mounts, process, log_path)
        self.pods.append(pod)
        return pod

    def wait_ready(self, pod: Pod, timeout: float = 90) -> None:
        """Poll the readiness probe (the startup probe first) until it passes."""

        def ready() -> bool:
            if not pod.alive():
                raise AssertionError(f"{pod.name} exited:\n{pod.log()[-3000:]}")
            return pod.probe("startupProbe") and pod.probe("readinessProbe")

        wait_until(ready, timeout, f"{pod.name} to become ready", step=0.2)
        self._notify("ready", pod)

    def _notify(self, event: str, pod: Pod) -> None:
        for watcher in self.watchers:
            watcher(event, pod)

    def _volumes(
        self, owner: str, workload: dict, spec: dict, container: dict, root: Path
    ) -> dict[str, Path]:
        """Write each mounted volume under the pod's directory; mountPath → local path."""
        sources = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            name = mount["name"]
            if name in claims:  # a PVC outlives its pod: one directory per claim
                local = self.claims.setdefault(f"{owner}/{name}", self.root / "pvc" / owner / name)
                local.mkdir(parents=True, exist_ok=True)
            else:
                local = root / "volumes" / name
                local.mkdir(parents=True, exist_ok=True)
                self._write_volume(sources[name], local)
            mounts[mount["mountPath"]] = local
        return mounts

    def _write_volume(self, source: dict[str, Any], local: Path) -> None:
        if "secret" in source:
            data = self.cluster.secrets[source["secret"]["secretName"]]
            items = source["secret"].get("items")
        elif "configMap" in source:
            data = {
                k: v.encode()
                for k, v in self.cluster.config_maps[source["configMap"]["name"]].items()
            }
            items = source["configMap"].get("items")
        else:
            return  # emptyDir: the directory is the volume
        paths = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
        for key, path in paths.items():
            target = local / path
            staged = target.with_name(f".{target.name}.tmp")
            staged.write_bytes(data[key])
            os.replace(staged, target)  # the kubelet's atomic swap: never a half-written file

    def sync_volumes(self, pod: Pod) -> None:
        """What the kubelet does every sync period: mounted Secrets and ConfigMaps follow the
        objects (not for subPath mounts, which the chart never uses for keys)."""
        sources = {v["name"]: v for v in pod.spec.get("volumes", [])}
        for mount in pod.container.get("volumeMounts", []):
            if mount["name"] in sources and "subPath" not in mount:
                self._write_volume(sources[mount["name"]], pod.mounts[mount["mountPath"]])

    def _environment(
        self, pod_name: str, container: dict, mounts: dict[str, Path], ports: dict[int, int]
    ) -> dict[str, str]:
        harness_env: dict[str, str] = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/"),
            "PYTHONPATH": str(REPO),
            **IMAGE_ENV,
        }
        env = dict(harness_env)
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.cluster.config_maps[source["configMapRef"]["name"]])
            if "secretRef" in source:
                secret = self.cluster.secrets[source["secretRef"]["name"]]
                env.update({k: v.decode() for k, v in secret.items()})
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = re.sub(
                    r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(item["value"])
                )
                continue
            ref = item["valueFrom"]
            if "secretKeyRef" in ref:
                secret = self.cluster.secrets[ref["secretKeyRef"]["name"]]
                env[item["name"]] = secret[ref["secretKeyRef"]["key"]].decode()
            elif "configMapKeyRef" in ref:
                key = ref["configMapKeyRef"]
                env[item["name"]] = self.cluster.config_maps[key["name"]][key["key"]]
            elif "fieldRef" in ref:
                env[item["name"]] = {"metadata.name": pod_name}.get(
                    ref["fieldRef"]["fieldPath"], "jobs"
                )
        for name, value in list(env.items()):
            if name not in harness_env:  # the container's own variables, not the harness's
                env[name] = self._resolve_services(_local_paths(value, mounts))
        for container_port, local in ports.items():
            setting = PORT_SETTINGS.get(container_port)
            if setting:
                env[setting] = str(local)
            for name, value in list(env.items()):
                if value.endswith(f":{container_port}") and name.endswith("__BIND"):
                    env[name] = f"127.0.0.1:{local}"
        return env

    def _resolve_services(self, value: str) -> str:
        """`<service>[.<ns>.svc[.cluster.local]]:<port>` → the local address of a backing pod."""
        for service in self.cluster.of_kind("Service"):
            name = service["metadata"]["name"]
            pattern = (
                rf"\b{re.escape(name)}(?:\.[a-z0-9-]+(?:\.svc(?:\.cluster\.local)?)?)?:(\d+)\b"
            )
            if re.search(pattern, value):
                value = re.sub(
                    pattern, lambda m, s=service: self._endpoint(s, int(m.group(1))), value
                )
        return value

    def _endpoint(self, service: dict, port: int) -> str:
        spec = next(p for p in service["spec"]["ports"] if p["port"] == port)
        selector = service["spec"]["selector"]
        for pod in self.pods:
            labels = pod.template["metadata"]["labels"]
            if pod.alive() and not pod.terminating and selector.items() <= labels.items():
                return f"127.0.0.1:{pod.port(spec.get('targetPort', port))}"
        raise AssertionError(f"service {service['metadata']['name']} has no running pod")

    # -- stopping -------------------------------------------------------------------------

    def stop(self, pod: Pod) -> None:
        """Terminate as the kubelet does: preStop, SIGTERM to the main process, SIGKILL of the
        whole container once the grace period (which preStop counts against) has passed."""
        pod.terminating = True
        self._notify("terminating", pod)
        started = time.monotonic()
        grace = float(pod.spec.get("terminationGracePeriodSeconds", 30))
        pre_stop = pod.container.get("lifecycle", {}).get("preStop", {}).get("exec")
        if pre_stop:
            argv = _localize(pre_stop["command"], pod.mounts, pod.env)
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    argv,
                    env=pod.env,
                    timeout=grace,
                    cwd=pod.root,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pod.process.pid, signal.SIGTERM)
        left = max(0.0, grace - (time.monotonic() - started))
        try:
            pod.exit_code = pod.process.wait(left)
        except subprocess.TimeoutExpired:
            pod.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pod.process.pid, signal.SIGKILL)  # the container's cgroup goes with it
        if pod.exit_code is None:
            pod.exit_code = pod.process.wait()
        pod.stopped_after = time.monotonic() - started

    def stop_in_background(self, pod: Pod) -> threading.Thread:
        thread = threading.Thread(target=self.stop, args=(pod,), daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        """Kill everything (test teardown)."""
        for pod in self.pods:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pod.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                pod.process.wait(10)

    # -- controllers ----------------------------------------------------------------------

    def running(self, owner: str) -> list[Pod]:
        return [p for p in self.pods if p.owner == owner and p.alive() and not p.terminating]

    def rolling_update(self, owner: str, replicas: int) -> tuple[list[Pod], list[Pod]]:
        """Replace `owner`'s pods by pods of its current template, as the Deployment
        controller does within maxSurge/maxUnavailable; returns (new pods, old pods)."""
        workload = self.cluster.workload(owner)
        template = workload["spec"]["template"]
        strategy = workload["spec"].get("strategy") or {}
        assert strategy.get("type", "RollingUpdate") == "RollingUpdate", strategy
        rolling = strategy.get("rollingUpdate") or {}
        surge = _scaled(rolling.get("maxSurge", "25%"), replicas, math.ceil)
        unavailable = _scaled(rolling.get("maxUnavailable", "25%"), replicas, math.floor)
        assert surge or unavailable, "a Deployment needs maxSurge or maxUnavailable above 0"
        old = [
            p for p in self.running(owner) if template_hash(p.template) != template_hash(template)
        ]
        new: list[Pod] = []
        stops: list[threading.Thread] = []
        while old:
            while len(new) < replicas and len(new) + len(old) < replicas + surge:
                new.append(self.start(owner, template))
            for pod in new:
                self.wait_ready(pod)
            removable = len(new) + len(old) - (replicas - unavailable)
            for pod in old[: max(1, removable) if removable > 0 else 0]:
                stops.append(self.stop_in_background(pod))
                old.remove(pod)
            if len(new) < replicas and not removable:
                raise AssertionError("rollout cannot progress with this strategy")
        for pod in new:
            self.wait_ready(pod)
        stopped = [p for p in self.pods if p.owner == owner and p.terminating]
        for thread in stops:
            thread.join()
        return new, stopped


def _scaled(value: int | str, replicas: int, rounding: Callable[[float], int]) -> int:
    if isinstance(value, str) and value.endswith("%"):
        return int(rounding(replicas * int(value[:-1]) / 100))
    return int(value)


def _local_paths(text: str, mounts: dict[str, Path]) -> str:
    """A path under a mountPath, in the pod's local directory instead."""
    if not mounts:
        return text
    # One pass, longest mount first: a local path must not be rewritten again.
    alternatives = "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
    return re.sub(rf"(?<![\w/])({alternatives})(?![\w.-])", lambda m: str(mounts[m.group(1)]), text)


def _localize(argv: list[str], mounts: dict[str, Path], env: dict[str, str]) -> list[str]:
    """A container command as this machine runs it: its binary found here, its paths local,
    `$(VAR)` expanded from the container's environment (as the kubelet does)."""
    out = [
        re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), _local_paths(a, mounts))
        for a in argv
    ]
    out[0] = BINARIES.get(out[0], out[0])
    return out


def _pod_network(argv: list[str], ports: dict[int, int]) -> list[str]:
    """Redis listens on (and redis-cli calls) its container port, 6379, inside its pod; here
    the pod's local port (6379 on this host is another Redis)."""
    if 6379 not in ports:
        return argv
    port = ports[6379]
    text = [re.sub(r"\bredis-cli\b", f"redis-cli -p {port}", a) for a in argv]
    flags = ["--port", str(port), "--bind", "127.0.0.1"]
    if text[0].endswith("redis-server"):
        return [*text, *flags]
    if any("redis-server" in a for a in text):  # `sh -c "… exec redis-server …"`
        text[-1] += " " + " ".join(flags)
    return text


class ServiceProxy:
    """A Service's virtual IP: each new connection goes to one of the current endpoints
    (round robin), as kube-proxy routes them; established connections are left alone."""

    def __init__(self) -> None:
        self.endpoints: list[int] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._next = itertools.count()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            endpoints = list(self.endpoints)
            if not endpoints:
                client.close()
                continue
            target = endpoints[next(self._next) % len(endpoints)]
            threading.Thread(target=self._pipe, args=(client, target), daemon=True).start()

    def _pipe(self, client: socket.socket, target: int) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", target), timeout=5)
        except OSError:
            client.close()
            return

        def copy(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        other = threading.Thread(target=copy, args=(upstream, client), daemon=True)
        other.start()
        copy(client, upstream)
        other.join(30)
        client.close()
        upstream.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


@dataclass
class Load:
    """Client traffic in background threads: `make_request()` per iteration; every outcome
    that is not a 2xx is recorded as a failure."""

    make_request: Callable[[], httpx.Response]
    threads: int = 4
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    results: list[httpx.Response] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> "Load":
        for _ in range(self.threads):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.make_request()
            except httpx.HTTPError as exc:
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with self._lock:
                if 200 <= response.status_code < 300:
                    self.ok += 1
                    self.results.append(response)
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")


@contextlib.contextmanager
def kubelet(values: dict[str, Any], root: Path) -> Iterator[Kubelet]:
    """A Kubelet over a fresh render of `values`; everything it started dies at exit."""
    node = Kubelet(Cluster(render(values)), root)
    try:
        yield node
    finally:
        node.shutdown()
