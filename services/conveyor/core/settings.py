"""Configuration: the one place that reads the environment.

Every variable is `CONVEYOR_<FIELD>`; nested groups use `__`, e.g. `CONVEYOR_API__WORKERS=4`.
"""

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import AliasChoices, BaseModel, Field, IPvAnyNetwork, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class ApiSettings(BaseModel):
    """The HTTP API process (gunicorn with uvicorn workers)."""

    bind: str = Field("0.0.0.0:8000", description="host:port gunicorn listens on.")
    workers: int = Field(2, ge=1, description="Number of uvicorn worker processes.")
    timeout_seconds: int = Field(30, ge=1, description="Kill a worker silent for this long.")
    graceful_timeout_seconds: int = Field(20, ge=1, description="Time to finish requests on stop.")
    keepalive_seconds: int = Field(5, ge=1, description="HTTP keep-alive timeout.")
    max_event_streams: int = Field(
        200,
        ge=1,
        description="Event streams one API process serves at once (each holds a Redis "
        "connection); past it, a new stream is refused with 503 and Retry-After.",
    )
    max_event_streams_per_tenant: int = Field(
        50,
        ge=1,
        description="Event streams one API process serves at once to one tenant, so that no "
        "tenant can hold every stream; past it, that tenant gets 429 and Retry-After.",
    )
    listing_max_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1024,
        description="A listing that asks for `fields=args,result` ends its page early (with "
        "a cursor) once those fields pass this many bytes; summaries are not counted.",
    )
    events_max_seconds: float = Field(
        300.0,
        gt=0,
        description="Longest a job-event stream stays open; the client then reconnects with "
        "Last-Event-ID and loses nothing.",
    )


class WorkerSettings(BaseModel):
    """A Celery worker process serving one tier."""

    concurrency: int = Field(4, ge=1, description="Prefork child processes per worker.")
    default_timeout_seconds: int = Field(
        300, ge=1, description="Soft time limit of a job that does not set `timeout_seconds`."
    )
    hard_timeout_grace_seconds: int = Field(
        10, ge=1, description="How long after the soft limit the child is killed."
    )
    visibility_timeout_seconds: int = Field(
        60,
        ge=2,
        description="A delivery whose lease is not renewed for this long is redelivered. "
        "Running jobs renew their lease, so this bounds recovery after a worker dies, "
        "not the length of a job.",
    )
    restore_interval_seconds: int = Field(
        10, ge=1, description="How often workers look for expired deliveries to redeliver."
    )
    start_grace_leases: float = Field(
        3.0,
        ge=1.0,
        description="How long a delivery whose run has not started (its prefork child hung "
        "before starting it) keeps its lease, in visibility timeouts; then the lease lapses "
        "and the message is redelivered. A run starts within milliseconds; the margin covers "
        "a start held up by a Redis failover or outage.",
    )
    shutdown_timeout_seconds: float = Field(
        25.0,
        ge=0,
        description="On SIGTERM, how long running jobs may finish before the rest are handed "
        "back to the queue. Keep it below Kubernetes' terminationGracePeriodSeconds.",
    )
    max_worker_deaths: int = Field(
        3, ge=1, description="A job whose worker dies under it this often is dead-lettered."
    )
    heartbeat_file: Path = Field(
        Path("/tmp/conveyor-worker-heartbeat"),  # noqa: S108 - an emptyDir in the chart
        description="Touched by a healthy consumer loop; read by `conveyor worker --check`.",
    )
    heartbeat_interval_seconds: float = Field(5.0, gt=0)
    heartbeat_max_age_seconds: float = Field(
        60.0, gt=0, description="`--check` fails when the heartbeat is older than this."
    )
    delayed_poll_seconds: float = Field(
        1.0, gt=0, description="How often the worker moves due delayed jobs onto their queue."
    )
    send_task_events: bool = Field(
        False,
        description="Emit Celery task events (received, started, succeeded, ...) so Flower "
        "attached to the same Redis shows the tiers' tasks. Costs a Redis PUBLISH per event.",
    )


class DurabilityCheck(StrEnum):
    """What to do when the Redis given could evict queued jobs."""

    WARN = "warn"
    REFUSE = "refuse"
    # A managed Redis (ElastiCache, Memorystore, Azure Cache) that disables CONFIG: trust its
    # persistence; still refuse an eviction policy it lets us read.
    MANAGED = "managed"
    OFF = "off"


class RedisSentinelSettings(BaseModel):
    """Redis Sentinel: when `addresses` is set, every client asks these Sentinels for the
    current primary of `master_name` (and follows a failover) instead of connecting to the
    host of `redis_url`, whose scheme (rediss:// for TLS), credentials and database still apply.
    """

    addresses: str = Field(
        "",
        description="Comma-separated host:port of the Sentinels (e.g. `s1:26379,s2:26379`); "
        "empty: no Sentinel, connect to `redis_url`.",
    )
    master_name: str = Field("conveyor", description="The Sentinels' name of the primary.")
    username: str | None = Field(None, description="ACL user of the Sentinels themselves.")
    password: SecretStr | None = Field(
        None, description="Password of the Sentinels themselves (`requirepass` of sentinel.conf)."
    )
    tls: bool = Field(
        False,
        description="Connect to the Sentinels over TLS (verified against `redis_ca_file` "
        "when set).",
    )

    def hosts(self) -> list[tuple[str, int]]:
        """The Sentinels as (host, port) pairs (port 26379 when omitted)."""
        pairs = []
        for item in self.addresses.split(","):
            if not (item := item.strip()):
                continue
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
            pairs.append((host.strip("[]"), int(port)))
        return pairs


class ReplicationSettings(BaseModel):
    """Replicated acknowledgement: a 2xx on submission only once replicas have the job."""

    ack_replicas: int = Field(
        0,
        ge=0,
        description="Replicas that must confirm an accepted job (Redis `WAIT`) before the API "
        "answers 2xx; 0: off (the primary alone). Too few in time: 503 + Retry-After.",
    )
    ack_timeout_ms: int = Field(
        500, ge=1, description="How long the API waits for the replicas' confirmation."
    )
    retry_after_seconds: int = Field(
        2, ge=1, description="Retry-After of the 503 when the replicas did not confirm."
    )


class FlowSettings(BaseModel):
    """Flow control at claim time (docs/flow-control.md): tenants share each tier fairly
    (stride scheduling by the keys file's weights) within these limits.
    """

    tenant_concurrency_per_tier: int = Field(
        0,
        ge=0,
        description="Most jobs of one tenant running at once on one tier, across every "
        "worker (0: no limit); the keys file can set a tenant's own. Workers, beat and the "
        "API must agree on it.",
    )
    tenant_max_queued_per_tier: int = Field(
        0,
        ge=0,
        description="Most jobs of one tenant waiting on one tier; past it its submissions get "
        "429 (0: no quota; the global LIMITS__MAX_QUEUE_DEPTH still applies).",
    )
    tenant_max_delayed: int = Field(
        0, ge=0, description="Most delayed jobs (and retry backoffs) of one tenant (0: none)."
    )
    tenant_max_bytes: int = Field(
        268_435_456,
        ge=0,
        description="Most bytes of one tenant's waiting and delayed messages (its jobs' "
        "arguments, mostly); past it its submissions get 429 (0: no quota).",
    )


class BeatSettings(BaseModel):
    """The periodic-job scheduler."""

    lock_timeout_seconds: int = Field(
        30, ge=2, description="Leader lock expiry: a standby takes over this long after a crash."
    )
    max_interval_seconds: float = Field(
        5.0, gt=0, description="Longest sleep between scheduler ticks."
    )
    callback_sweep_after_seconds: float = Field(
        30.0,
        gt=0,
        description="A completion callback still not enqueued this long after its job finished "
        "(its worker died, or Redis refused the enqueue) is enqueued by the beat leader.",
    )


class ScheduleSettings(BaseModel):
    """Runtime schedules (/v1/schedules) and how beat runs every schedule."""

    max_per_tenant: int = Field(
        100, ge=0, description="Schedules a tenant may create through the API (0: no limit)."
    )
    min_interval_seconds: float = Field(
        10.0, gt=0, description="Shortest interval of a schedule created through the API."
    )
    catch_up_grace_seconds: float = Field(
        60.0,
        gt=0,
        description="A tick started later than this (plus its jitter) was missed while no "
        "beat ran: its schedule's catch-up policy decides whether it runs.",
    )


class ConsoleSettings(BaseModel):
    """The operator console (/ui) and the audit log."""

    enabled: bool = Field(True, description="Serve the console under /ui.")
    session_ttl_seconds: int = Field(
        8 * 3600, ge=60, description="A console session ends this long after sign-in."
    )
    secure_cookie: bool = Field(
        True,
        description="Mark the session cookie Secure (HTTPS only; browsers also accept it "
        "from http://localhost). Turn off only behind plain HTTP on a trusted network.",
    )
    audit_max_entries: int = Field(
        1_000_000, ge=1000, description="Audit entries kept (the oldest are trimmed)."
    )
    audit_submissions: bool = Field(
        True,
        description="Also audit job and workflow submissions (one XADD each, after the "
        "answer); the job record keeps the tenant either way.",
    )


class SmtpSecurity(StrEnum):
    """How the SMTP connection is secured."""

    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"


class SmtpSettings(BaseModel):
    """The mail relay used by the `email.send` task."""

    host: str = "localhost"
    port: int = Field(25, ge=1, le=65535)
    security: SmtpSecurity = SmtpSecurity.NONE
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field("conveyor@localhost", description="Default From address.")
    timeout_seconds: float = Field(30.0, gt=0)


MIN_SIGNING_SECRET_LENGTH = 16


class WebhookSettings(BaseModel):
    """Outgoing webhooks (`webhook.deliver` and completion callbacks)."""

    enabled: bool = Field(
        True,
        description="Webhooks and completion callbacks: the `webhook.deliver` task and the "
        "`callback_url` of submissions. Enabled, they need `signing_secret`.",
    )
    signing_secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 deployment key of the Conveyor-Signature header (each "
        f"tenant's key is derived from it); at least {MIN_SIGNING_SECRET_LENGTH} characters. "
        "No default: the API and workers refuse to start without it while webhooks are on.",
    )
    timeout_seconds: float = Field(10.0, gt=0)
    user_agent: str = "Conveyor-Webhook/1"
    allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Private networks webhooks and callbacks may reach anyway (CIDRs). By "
        "default only public addresses are reached: loopback, private, link-local and "
        "metadata addresses are refused after DNS resolution.",
    )
    max_redirects: int = Field(
        3, ge=0, le=10, description="307/308 redirects followed, each target checked again."
    )

    def secret(self) -> str:
        """The deployment's signing secret; raises ValueError when it is missing or too short
        to sign with (whether or not webhooks are enabled: nothing signs with a weak one).
        """
        problem = secret_problem(self.signing_secret)
        if problem is not None:
            raise ValueError(problem)
        assert self.signing_secret is not None  # secret_problem() said so
        return self.signing_secret.get_secret_value()

    def problem(self) -> str | None:
        """Why the API and workers must refuse to start, or None: webhooks on without a
        signing secret would send signatures anyone can forge.
        """
        return secret_problem(self.signing_secret) if self.enabled else None


def secret_problem(secret: SecretStr | str | None) -> str | None:
    """What is wrong with `secret` as the webhook signing secret, or None."""
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else (secret or "")
    if not value:
        return (
            "webhooks are enabled but CONVEYOR_WEBHOOK__SIGNING_SECRET is not set: set it "
            "to a random value (e.g. `openssl rand -hex 32`), or disable webhooks and "
            "callbacks with CONVEYOR_WEBHOOK__ENABLED=false"
        )
    if len(value) < MIN_SIGNING_SECRET_LENGTH:
        return (
            f"CONVEYOR_WEBHOOK__SIGNING_SECRET is {len(value)} characters long; use at "
            f"least {MIN_SIGNING_SECRET_LENGTH} random ones (e.g. `openssl rand -hex 32`)"
        )
    return None


class AuthSettings(BaseModel):
    """API keys: who may call the API, as which tenant, with which scopes."""

    disabled: bool = Field(
        False,
        description="DEVELOPMENT ONLY: accept every request as tenant `default` with every "
        "scope. `conveyor dev` sets it; the chart refuses it in production.",
    )
    keys_file: Path | None = Field(
        None,
        description="YAML file of hashed API keys (a mounted Secret); re-read when it changes.",
    )
    keys: SecretStr | None = Field(
        None, description="The same document inline (a Secret-backed variable); read at start."
    )
    reload_interval_seconds: float = Field(
        5.0, gt=0, description="How often the keys file is checked for changes."
    )


class QueueDepthLimits(BaseModel):
    """Most messages waiting on each queue; past it, submissions are refused (0: no limit)."""

    high: int = Field(100_000, ge=0)
    default: int = Field(100_000, ge=0)
    low: int = Field(1_000_000, ge=0)

    def for_queue(self, queue: str) -> int:
        """The limit of one queue."""
        limit: int = getattr(self, queue)
        return limit


class LimitSettings(BaseModel):
    """Rate limits, backpressure and request-size limits of the API."""

    rate_per_second: float = Field(
        200.0,
        ge=0,
        description="Requests per second per tenant (all API replicas together); 0: no limit. "
        "The keys file can set a tenant's own.",
    )
    burst: int = Field(400, ge=1, description="Requests a tenant may make at once.")
    max_queue_depth: QueueDepthLimits = QueueDepthLimits()
    max_delayed_jobs: int = Field(
        1_000_000,
        ge=0,
        description="Most delayed jobs waiting; past it, delayed submissions "
        "are refused (0: no limit).",
    )
    backpressure_retry_after_seconds: int = Field(
        5, ge=1, description="Retry-After of a submission refused because its queue is full."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body (413).")
    max_batch_jobs: int = Field(
        1000, ge=1, le=10_000, description="Most submissions in one POST /v1/jobs/batch."
    )
    body_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest time to receive a request's body once its headers are in; a "
        "slower client gets 408 and the connection is closed.",
    )
    max_header_bytes: int = Field(
        16_384, ge=1024, description="Largest total of request headers (431)."
    )
    max_args_depth: int = Field(32, ge=1, description="Deepest nesting of a job's arguments.")
    max_string_length: int = Field(
        65_536, ge=1, description="Longest string anywhere in a job's arguments."
    )


class JobSettings(BaseModel):
    """Defaults and retention for job records."""

    retention_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="How long finished jobs and idempotency keys are kept."
    )
    dead_letter_retention_seconds: int = Field(
        14 * 24 * 3600, ge=60, description="How long dead-lettered jobs are kept for replay."
    )
    max_delay_seconds: int = Field(
        30 * 24 * 3600, ge=0, description="Upper bound of delay_seconds."
    )


class WorkflowSettings(BaseModel):
    """Bounds of workflows (docs/workflows.md)."""

    max_steps: int = Field(
        1000, ge=1, le=10_000, description="Most steps one workflow may have (422 beyond)."
    )
    max_input_bytes: int = Field(
        1_048_576,
        ge=1,
        description="Most bytes of parents' results one step may take as arguments; a step "
        "that would take more fails (permanently) instead of running.",
    )


class MetricsSettings(BaseModel):
    """Prometheus endpoints."""

    multiprocess_dir: Path = Field(
        Path("/tmp/conveyor-metrics"),  # noqa: S108 - an emptyDir in the chart
        description="Scratch directory for multiprocess metrics (one subdirectory per service).",
    )
    worker_port: int = Field(9808, ge=0, le=65535, description="Worker /metrics port; 0: off.")
    beat_port: int = Field(9809, ge=0, le=65535, description="Beat /metrics port; 0: off.")
    exporter_port: int = Field(9810, ge=1, le=65535, description="`conveyor exporter` port.")
    api_port: int = Field(
        9811,
        ge=0,
        le=65535,
        description="API /metrics port, served by the gunicorn master apart from client "
        "traffic (network policies can admit scrapers without admitting clients); 0: off.",
    )


class LogFormat(StrEnum):
    """Log line format."""

    TEXT = "text"
    JSON = "json"


class Settings(BaseSettings):
    """All of Conveyor's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    redis_url: SecretStr = Field(
        SecretStr("redis://localhost:6379/0"),
        description="Broker and job store. A secret because it may carry a password.",
    )
    redis_password: SecretStr | None = Field(
        None,
        description="Redis password, kept out of the URL (e.g. from a Kubernetes Secret); "
        "used when the URL carries none.",
    )
    redis_username: str | None = Field(
        None,
        description="Redis ACL user (Redis 6+), kept out of the URL like the password; used "
        "when the URL carries none.",
    )
    redis_ca_file: Path | None = Field(
        None,
        description="PEM bundle of the CAs that sign the Redis server's certificate (for "
        "rediss:// with a private CA, e.g. a managed Redis); the system CAs when unset.",
    )
    redis_sentinel: RedisSentinelSettings = RedisSentinelSettings()
    redis_replication: ReplicationSettings = ReplicationSettings()
    key_prefix: str = Field("conveyor", description="Prefix of every Redis key Conveyor owns.")
    redis_durability_check: DurabilityCheck = Field(
        DurabilityCheck.WARN,
        description="At startup, check that Redis cannot evict jobs (maxmemory-policy) and "
        "persists them (AOF); warn or refuse to start when it could lose them. `managed`: a "
        "managed Redis whose CONFIG is disabled, trusted to persist (eviction still refused "
        "when readable).",
    )
    task_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra modules whose @task functions are loaded: a comma-separated list "
        "(`acme.tasks,acme.reports`) or a JSON array. They are imported from the current "
        "directory or the Python path (PYTHONPATH, installed packages).",
    )
    schedule_file: Path | None = Field(None, description="YAML file of periodic jobs for beat.")
    otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "CONVEYOR_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        description="OTLP/HTTP endpoint for traces (the standard OTEL_* variables work); "
        "tracing is off when unset. Other OTEL_* settings are read by the SDK.",
    )
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    api: ApiSettings = ApiSettings()
    worker: WorkerSettings = WorkerSettings()
    beat: BeatSettings = BeatSettings()
    schedules: ScheduleSettings = ScheduleSettings()
    console: ConsoleSettings = ConsoleSettings()
    flow: FlowSettings = FlowSettings()
    smtp: SmtpSettings = SmtpSettings()
    webhook: WebhookSettings = WebhookSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitSettings = LimitSettings()
    jobs: JobSettings = JobSettings()
    workflows: WorkflowSettings = WorkflowSettings()
    metrics: MetricsSettings = MetricsSettings()

    @field_validator("task_modules", mode="before")
    @classmethod
    def _module_list(cls, value: Any) -> Any:
        """A JSON array, or dotted names separated by commas (blanks around them ignored)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError as exc:
                raise ValueError(f"not a JSON array of module names: {exc}") from None
        return [name.strip() for name in text.split(",") if name.strip()]

    @field_validator("task_modules")
    @classmethod
    def _dotted_names(cls, value: list[str]) -> list[str]:
        """Module names as `import` takes them, not file paths."""
        for name in value:
            if not _DOTTED_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a dotted module name (write acme.tasks for acme/tasks.py)"
                )
        return value

    def redis_dsn(self) -> str:
        """The Redis URL every client connects with: `redis_url` plus `redis_username` and
        `redis_password` where the URL has none of its own.
        """
        url = self.redis_url.get_secret_value()
        parts = urlsplit(url)
        username = parts.username or self.redis_username
        password: str | None = parts.password
        if password is None and self.redis_password is not None:
            password = quote(self.redis_password.get_secret_value(), safe="")
        if username == parts.username and password == parts.password:
            return url
        user = quote(username, safe="") if username and not parts.username else username or ""
        netloc = f"{user}:{password}@" if password is not None else f"{user}@"
        netloc += parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def redis_tls_options(self) -> dict[str, str]:
        """TLS options for redis-py, kombu and RedBeat (all take `ssl_ca_certs`): empty
        unless the URL is rediss:// and a CA bundle is set. Certificates are verified either
        way (redis-py's default for rediss://).
        """
        if self.redis_ca_file is None or not self.redis_dsn().startswith("rediss://"):
            return {}
        return {"ssl_cert_reqs": "required", "ssl_ca_certs": str(self.redis_ca_file)}
