"""What an audit entry says (the API writes them: `api/audit.py`; the clients read them)."""

from pydantic import BaseModel, Field


class AuditEntry(BaseModel):
    """One state-changing call."""

    id: str = Field(..., description="The entry's id (ordered by time).")
    at: str = Field(..., description="When it was answered (ISO 8601, UTC).")
    key_id: str = Field(..., description="The API key that made it.")
    tenant: str = Field(..., description="That key's tenant.")
    via: str = Field(..., description="`api` (a key in a header) or `console` (a session).")
    action: str = Field(..., description="The operation (its OpenAPI operation id).")
    method: str
    path: str
    target: str = Field(..., description="What it acted on: the path's ids, or what it made.")
    status: int = Field(..., description="The HTTP status it was answered with.")
    outcome: str = Field(..., description="`ok` (2xx/3xx), `refused` (4xx) or `error` (5xx).")
