"""The OpenAPI document is fit for client generators, and the docs pages work offline:
a client generated from the live schema (openapi-python-client) submits, reads, lists and
cancels jobs and decodes problems; /docs and /redoc load only assets the API serves itself.
"""

import re
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from conveyor.api.app import STATIC_DIR
from tests.support.auth import ADMIN_KEY
from tests.support.processes import Platform


@pytest.fixture
def client(api_only: Platform) -> httpx.Client:
    with api_only.http() as client:
        yield client


class References(HTMLParser):
    """Every URL a page loads or links to: src, href, and url(...) in inline styles."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        self.urls.extend(value for name, value in attrs if name in ("src", "href") and value)

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)
        self.urls.extend(re.findall(r"url\(['\"]?([^'\")]+)", data))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(client: httpx.Client, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    parser = References()
    parser.feed(response.text)
    assert parser.urls, "the page loads its UI from somewhere"
    assert not re.search(r"https?://", response.text), "nothing from another host"
    for url in parser.urls:
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    # The page fetches the schema from this API too.
    assert any("/openapi.json" in script for script in parser.scripts) or (
        'spec-url="/openapi.json"' in response.text
    )
    loaded = [u for u in parser.urls if u.endswith(".js")]
    assert loaded, "the UI's script is served by the API"
    assert (
        client.get(loaded[0])
        .headers["content-type"]
        .startswith(("application/javascript", "text/javascript"))
    )


def test_the_vendored_uis_keep_their_licences() -> None:
    assert "Apache License" in (STATIC_DIR / "swagger-ui" / "LICENSE").read_text()
    assert "MIT License" in (STATIC_DIR / "redoc" / "LICENSE").read_text()
    assert "swagger-ui-dist" in (STATIC_DIR / "README.md").read_text()


def test_errors_are_documented_as_sent(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    problems = 0
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            assert not operation["operationId"].endswith(("_get", "_post", "_delete")), path
            for status, response in operation["responses"].items():
                if int(status) < 400 or path == "/readyz":
                    continue
                problems += 1
                assert list(response["content"]) == ["application/problem+json"], (path, status)
                ref = response["content"]["application/problem+json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Problem", (method, path, status)
    assert problems > 30
    paths = schema["paths"]
    assert set(paths["/v1/tasks"]["get"]["responses"]) == {"200", "401", "403", "429", "503"}
    assert "409" in paths["/v1/jobs"]["post"]["responses"]
    assert "409" in paths["/v1/jobs/{job_id}/cancel"]["post"]["responses"]
    assert "409" not in paths["/v1/jobs/{job_id}"]["get"]["responses"]
    assert "404" in paths["/v1/jobs/{job_id}"]["get"]["responses"]
    assert paths["/v1/jobs"]["post"]["operationId"] == "submit_job"
    readyz = paths["/readyz"]["get"]["responses"]
    assert readyz["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/Health")
    result = schema["components"]["schemas"]["Job"]["properties"]["result"]
    assert {option["type"] for option in result["anyOf"]} == {
        "object", "array", "string", "number", "boolean", "null",
    }  # fmt: skip
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_problems_say_what_is_wrong(client: httpx.Client) -> None:
    malformed = client.post(
        "/v1/jobs",
        content=b'{"task": "demo.echo",, }',
        headers={"content-type": "application/json"},
    ).json()
    assert malformed["type"] == "urn:conveyor:problem:malformed-json"
    assert malformed["errors"][0]["pointer"] == "#"
    assert "not valid JSON at character" in malformed["errors"][0]["detail"]
    assert "does not match the schema" not in malformed["detail"]

    unknown = client.post("/v1/jobs", json={"task": "demo.eco"}).json()
    assert unknown["errors"][0]["detail"].startswith("Unknown task 'demo.eco'; the tasks are:")
    assert "Input tag" not in str(unknown)

    listed = client.get("/v1/jobs", params={"task": "nope"})
    assert listed.status_code == 422
    assert listed.json()["type"] == "urn:conveyor:problem:unknown-task"
    assert "demo.echo" in listed.json()["valid_tasks"]

    cursor = client.get("/v1/jobs", params={"cursor": "bogus"})
    assert cursor.status_code == 422
    assert "next_cursor" in cursor.json()["detail"]


GENERATED_USE = textwrap.dedent(
    """
    import sys

    from conveyor_api import AuthenticatedClient
    from conveyor_api.api.jobs import cancel_job, get_job, list_jobs, submit_job
    from conveyor_api.api.tasks import list_tasks
    from conveyor_api.models import EchoArgs, Job, JobState, Problem
    from conveyor_api.models import SubmitDemoEcho, SubmitDemoSleep

    client = AuthenticatedClient(base_url=sys.argv[1], token=sys.argv[2])
    job = submit_job.sync(
        client=client, body=SubmitDemoEcho(task="demo.echo", args=EchoArgs(), delay_seconds=600.0)
    )
    assert isinstance(job, Job) and job.state == JobState.SCHEDULED, job
    again = get_job.sync(job.id, client=client)
    assert isinstance(again, Job) and again.id == job.id and again.task == "demo.echo", again
    page = list_jobs.sync(client=client, task="demo.echo")
    assert job.id in [item.id for item in page.items], page
    cancelled = cancel_job.sync(job.id, client=client)
    assert isinstance(cancelled, Job) and cancelled.state == JobState.CANCELLED, cancelled

    missing = get_job.sync("00000000-0000-4000-8000-000000000000", client=client)
    assert isinstance(missing, Problem) and missing.status == 404, missing
    invalid = submit_job.sync(client=client, body=SubmitDemoSleep.from_dict(
        {"task": "demo.sleep", "args": {"seconds": -1}}
    ))
    assert isinstance(invalid, Problem) and invalid.status == 422, invalid
    assert [error.pointer for error in invalid.errors] == ["#/args/seconds"], invalid
    tasks = list_tasks.sync(client=client)
    assert "demo.sleep" in [task.name for task in tasks], tasks
    print("generated client OK")
    """
)


def test_a_generated_client_works_against_the_live_api(api_only: Platform, tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    generator = shutil.which("openapi-python-client", path=str(bin_dir))
    assert generator, "openapi-python-client is a dev dependency"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}  # its post-hooks run ruff from the venv
    generated = subprocess.run(
        [generator, "generate", "--url", f"{api_only.base_url}/openapi.json",
         "--output-path", str(tmp_path / "conveyor_api"), "--meta", "none"],
        capture_output=True, text=True, timeout=300, check=False, env=env, cwd=tmp_path,
    )  # fmt: skip
    output = generated.stdout + generated.stderr
    assert generated.returncode == 0, output
    assert "Warning" not in output, output
    assert "Error" not in output, output
    used = subprocess.run(
        [sys.executable, "-W", "error", "-c", GENERATED_USE, api_only.base_url, ADMIN_KEY],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert used.returncode == 0, used.stdout + used.stderr
    assert "generated client OK" in used.stdout
