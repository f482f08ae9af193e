"""API keys of the test suite (test-only secrets) and the keys file that holds their hashes."""

from pathlib import Path

import yaml

from conveyor.core.apikeys import hash_key

KEYS_FILE = Path(__file__).with_name("keys.yaml")

ADMIN_KEY = "cvk_tests-admin-0000000000000000000000000000000"
TEAM_A_KEY = "cvk_team-a-writer-00000000000000000000000000000"
TEAM_A_READER_KEY = "cvk_team-a-reader-00000000000000000000000000000"
TEAM_B_KEY = "cvk_team-b-writer-00000000000000000000000000000"

# (key, id, tenant, scopes) of every key in keys.yaml.
TEST_KEYS = [
    (ADMIN_KEY, "tests-admin", "tests", ["admin"]),
    (TEAM_A_KEY, "team-a-writer", "team-a", ["jobs:read", "jobs:write"]),
    (TEAM_A_READER_KEY, "team-a-reader", "team-a", ["jobs:read"]),
    (TEAM_B_KEY, "team-b-writer", "team-b", ["jobs:read", "jobs:write"]),
]


def keys_document(
    keys: list[tuple[str, str, str, list[str]]], tenants: dict[str, dict[str, float]] | None = None
) -> str:
    """A keys file holding the hashes of `keys`."""
    entries = [
        {"id": key_id, "tenant": tenant, "scopes": scopes, "sha256": hash_key(key)}
        for key, key_id, tenant, scopes in keys
    ]
    return yaml.safe_dump({"keys": entries, "tenants": tenants or {}}, sort_keys=False)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
