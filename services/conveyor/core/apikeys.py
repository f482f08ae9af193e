"""API keys: the keys document, its hashes, and the principal a key stands for.

Keys are 256-bit random tokens, so a plain SHA-256 of the key is a safe thing to store: there is
no dictionary to attack, and a lookup costs one hash per request instead of a slow KDF's
tens of milliseconds. The document (YAML) looks like::

    keys:
      - id: team-a-2026-11        # shown in logs; the key itself never is
        tenant: team-a
        scopes: [jobs:read, jobs:write]
        sha256: 9f86d081884c7d65...
    tenants:
      team-a: {rate_per_second: 50, burst: 100, weight: 2, concurrency_per_tier: 8}
"""

import hashlib
import secrets
from enum import StrEnum
from typing import Annotated

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
KEY_PREFIX = "cvk_"
# Owner of the platform's own jobs (periodic runs without a tenant); only `admin` reads them.
SYSTEM_TENANT = "system"

TenantName = Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]


class Scope(StrEnum):
    """What a key may do."""

    JOBS_READ = "jobs:read"
    JOBS_WRITE = "jobs:write"
    ADMIN = "admin"


class KeyEntry(BaseModel):
    """One key: its hash and what it stands for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., min_length=1, max_length=100, description="Name for logs and audits.")
    tenant: TenantName
    scopes: frozenset[Scope] = Field(..., min_length=1)
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")

    @field_validator("tenant")
    @classmethod
    def _not_reserved(cls, tenant: str) -> str:
        if tenant == SYSTEM_TENANT:
            raise ValueError(f"{SYSTEM_TENANT!r} is reserved for the platform's own jobs")
        return tenant


class TenantEntry(BaseModel):
    """A tenant's own limits in the keys file; what it leaves out is the deployment's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_second: float | None = Field(None, ge=0, description="Submissions per second.")
    burst: int | None = Field(None, ge=1, description="Submissions in a burst.")
    weight: float = Field(
        1.0,
        ge=0.01,
        le=100,
        description="Fair-share weight within a tier: a tenant of weight 2 gets twice the "
        "claims of a tenant of weight 1 while both have jobs waiting.",
    )
    concurrency_per_tier: int | None = Field(
        None,
        ge=0,
        description="Most of its jobs running at once on one tier (0: no limit); unset: "
        "the deployment's CONVEYOR_FLOW__TENANT_CONCURRENCY_PER_TIER.",
    )
    max_queued_per_tier: int | None = Field(
        None, ge=0, description="Quota of jobs waiting per tier (0: none; unset: the deployment's)."
    )
    max_delayed: int | None = Field(None, ge=0, description="Quota of delayed jobs.")
    max_bytes: int | None = Field(None, ge=0, description="Quota of bytes of waiting messages.")


class TenantLimits(BaseModel):
    """A tenant's limits as enforced: its own entry over the deployment's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_second: float = Field(..., ge=0)
    burst: int = Field(..., ge=1)
    weight: float = Field(1.0, ge=0.01, le=100)
    concurrency_per_tier: int | None = Field(None, ge=0)
    max_queued_per_tier: int = Field(0, ge=0)
    max_delayed: int = Field(0, ge=0)
    max_bytes: int = Field(0, ge=0)


class KeysDocument(BaseModel):
    """The whole keys file."""

    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = Field(default_factory=list)
    tenants: dict[TenantName, TenantEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique(self) -> "KeysDocument":
        hashes = [entry.sha256 for entry in self.keys]
        if len(set(hashes)) != len(hashes):
            raise ValueError("the same key hash is listed twice")
        ids = [entry.id for entry in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("the same key id is listed twice")
        return self


class Principal(BaseModel):
    """Who is calling: a tenant with scopes, named by the key's id."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    tenant: str
    scopes: frozenset[Scope]

    def can(self, scope: Scope) -> bool:
        """`admin` implies every other scope."""
        return scope in self.scopes or Scope.ADMIN in self.scopes


DEVELOPMENT_PRINCIPAL = Principal(key_id="auth-disabled", tenant="default", scopes=frozenset(Scope))


class KeyRing:
    """Lookup from a presented key to its principal, plus per-tenant limits."""

    def __init__(self, document: KeysDocument) -> None:
        self._by_hash = {entry.sha256: entry for entry in document.keys}
        self.tenants = dict(document.tenants)

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, presented: str) -> Principal | None:
        """The principal of `presented`, or None for an unknown key."""
        entry = self._by_hash.get(hash_key(presented))
        if entry is None:
            return None
        return Principal(key_id=entry.id, tenant=entry.tenant, scopes=entry.scopes)

    def by_hash(self, sha256: str) -> Principal | None:
        """The principal of the key with this hash, while the ring holds it (a console
        session names its key by hash: a key removed from the keys file ends its sessions).
        """
        entry = self._by_hash.get(sha256)
        if entry is None:
            return None
        return Principal(key_id=entry.id, tenant=entry.tenant, scopes=entry.scopes)


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys(text: str) -> KeysDocument:
    """Parse and validate a keys document (YAML or JSON); raises ValueError when invalid."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {exc}") from None
    return KeysDocument.model_validate(raw or {})


def generate_key() -> str:
    """A new random key: `cvk_` and 43 URL-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)
