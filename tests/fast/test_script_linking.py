"""Each job script carries only the shared functions it calls (conveyor.jobstore.scripts.link):
Redis runs a script's whole text on every call, so every unused function was a closure made
for nothing on every accept, claim and finish."""

import re

import pytest
import redis

from conveyor.jobstore import scripts
from conveyor.jobstore.keys import lua_prelude
from tests.support.processes import RedisServer

SHARED = """local function key_a(prefix)
  return prefix .. 'a'
end
local function key_b(prefix)
  return prefix .. 'b'
end
local state = {}
local function helper(prefix)
  if not state[1] then
    state[1] = key_b(prefix)
  end
  return state[1]
end
local function unused(prefix)
  return key_a(prefix)
end
"""


def _defined(source: str) -> list[str]:
    return re.findall(r"^local (?:function )?(\w+)", source, re.MULTILINE)


def test_only_called_functions_and_their_dependencies_are_linked_in_order() -> None:
    body = "-- unused(ARGV[1]) is only named in a comment\nreturn helper(ARGV[1])"
    linked = scripts.link([SHARED], body)
    assert _defined(linked) == ["key_b", "state", "helper"]
    assert linked.endswith(body)


def test_nothing_is_linked_for_a_script_that_calls_no_shared_function() -> None:
    assert scripts.link([SHARED], "return 1") == "return 1"


@pytest.mark.parametrize("name", scripts.JOB_SCRIPTS)
def test_every_script_is_linked_with_fewer_functions_than_the_whole_prelude(name: str) -> None:
    source = getattr(scripts, name.upper()).source
    everything = len(re.findall(r"^local function", lua_prelude(), re.MULTILINE))
    assert len(re.findall(r"^local function key_", source, re.MULTILINE)) < everything
    # Every key function the script's own text calls is there.
    for called in set(re.findall(r"\b(key_\w+)\(", scripts.script_text(name))):
        assert f"local function {called}(" in source, f"{name} lacks {called}"


def test_every_linked_script_compiles_in_redis(redis_server: RedisServer) -> None:
    client: redis.Redis = redis_server.client()
    for name in scripts.JOB_SCRIPTS:
        lua = getattr(scripts, name.upper())
        assert client.script_load(lua.source) == lua.sha
