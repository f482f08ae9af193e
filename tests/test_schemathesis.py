"""Schemathesis against the live OpenAPI schema of a running API, with a valid admin key:
no 5xx, every response as documented (status, content type, schema, Allow headers), and
requests without a key refused.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.auth import ADMIN_KEY
from tests.support.processes import Platform

# A fixed seed makes a CI failure reproducible; change it to explore further.
SEED = "20261121"
CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_nothing(api_only: Platform, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is a dev dependency"
    result = subprocess.run(
        [
            st, "--config-file", str(CONFIG), "run", f"{api_only.base_url}/openapi.json",
            "--header", f"Authorization: Bearer {ADMIN_KEY}",
            "--checks", "all",
            # Schema-valid but semantically wrong requests (a cursor this server never issued,
            # an Idempotency-Key header that contradicts the body) are rightly 422.
            "--exclude-checks", "positive_data_acceptance",
            "--max-examples", "25",
            # One worker thread: with two, Hypothesis parses its strategies' lambdas in both
            # threads at once, and CPython 3.11's ast module keeps one recursion counter per
            # interpreter (python/cpython#106905): "AST constructor recursion depth
            # mismatch" failed a CI run (stop 33) with nothing wrong in the API.
            "--workers", "1",
            "--seed", SEED,
            "--no-color",
            "--report-dir", str(tmp_path),
        ],
        # Its crash cache goes to the working directory: keep it out of the checkout.
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    print(output[-3000:])
    failures = output[max(0, output.find("FAILURES")) :]
    assert result.returncode == 0, failures[:8000]
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated, output[-3000:]
    assert int(generated.group(1)) == int(generated.group(2)) > 500
    assert "Traceback" not in api_only.services[0].log()
