"""The Argo CD health check (docs/gitops/argocd-health.lua) run the way Argo CD runs a custom check from
argocd-cm, on the FineTuneJob in every state the operator reports.

Argo CD (argo-cd util/lua/lua.go, VM.runLuaWithResourceActionParameters) creates its gopher-lua state with
SkipOpenLibs unless `resource.customizations.useOpenLibs.<group_kind>` is true, then opens only:
package (gopher-lua loadlib.go OpenPackage), base (baselib.go OpenBase: baseFuncs plus ipairs and pairs),
table (tablelib.go tableFuncs) and a "safe" os with only time and date (util/lua/oslib_safe.go), also
preloaded for `require("os")`. It sets the globals `obj` (the resource) and `actionParams`, runs the script,
and takes the returned table's status and message (ExecuteHealthLua), answering Unknown with "Lua returned
an invalid health status" for a status outside isValidHealthStatusCode.

gopher-lua implements Lua 5.1; the test runs the script in Lua 5.1 (lupa.lua51) inside an environment
holding exactly those names, with strings' metatable removed (the string library sets it, so without it
`s:format()` fails as it does in Argo CD).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.charts import gitops_states

lupa51 = pytest.importorskip("lupa.lua51", reason="lupa (Lua runtimes for Python) is not installed")

SCRIPT = (Path(__file__).resolve().parents[2] / "docs" / "gitops" / "argocd-health.lua").read_text()

# gitops-engine pkg/health HealthStatusCode values accepted by lua.go isValidHealthStatusCode.
VALID_HEALTH = {"Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing"}

# The Lua side: an environment with only what Argo CD opens, and a require() over it (gopher-lua's
# loRequire: package.loaded, then package.preload; no search path reaches a file here).
SANDBOX = r"""
return function(script, obj)
  local real = _G
  local env = {}
  -- base: gopher-lua baselib.go baseFuncs, plus ipairs/pairs, _G and _VERSION.
  for _, name in ipairs({"assert", "collectgarbage", "error", "getmetatable", "next", "pcall", "print",
                         "rawequal", "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring",
                         "type", "unpack", "xpcall", "newproxy", "ipairs", "pairs", "module"}) do
    env[name] = real[name]
  end
  -- Loaders and getfenv/setfenv see the sandbox, not the test's full global table.
  local function bind(chunk, err) if chunk then real.setfenv(chunk, env) end return chunk, err end
  env.load = function(...) return bind(real.load(...)) end
  env.loadstring = function(...) return bind(real.loadstring(...)) end
  env.loadfile = function(...) return bind(real.loadfile(...)) end
  env.dofile = function(path) return assert(env.loadfile(path))() end
  env.getfenv = function(level) if level == 0 then return env end return real.getfenv(level) end
  env.setfenv = real.setfenv
  env._printregs = function() end
  env._G = env
  env._VERSION = "Lua 5.1"
  env._GOPHER_LUA_VERSION = "GopherLua"
  -- table: gopher-lua tablelib.go tableFuncs.
  env.table = {getn = table.getn, concat = table.concat, insert = table.insert, maxn = table.maxn,
               remove = table.remove, sort = table.sort}
  -- os: argo-cd util/lua/oslib_safe.go osFuncs.
  local function safe_os() return {time = os.time, date = os.date} end
  env.os = safe_os()
  -- package: gopher-lua loadlib.go OpenPackage (loaded holds the opened modules; os is also preloaded).
  local loaded = {_G = env, table = env.table, os = env.os}
  env.package = {loaded = loaded, preload = {os = safe_os}, path = "", cpath = "",
                 loadlib = function() return nil, "loadlib is not supported", "absent" end,
                 seeall = function(m) return setmetatable(m, {__index = env}) end}
  loaded.package = env.package
  env.require = function(name)
    if loaded[name] ~= nil then return loaded[name] end
    local loader = env.package.preload[name]
    if loader == nil then error("module " .. name .. " not found") end
    loaded[name] = loader(name) or true
    return loaded[name]
  end
  env.obj = obj
  env.actionParams = {}
  local chunk = assert(loadstring(script, "health.lua"))
  setfenv(chunk, env)
  return chunk()
end
"""


def _runtime():
    lua = lupa51.LuaRuntime(register_eval=False, register_builtins=False)
    lua.execute("debug.setmetatable('', nil)")  # no string library: no methods on strings
    return lua


def _to_lua(lua, value):
    """argo-cd lua.go decodeValue: maps and arrays become tables, numbers Lua numbers, null nothing."""
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(obj: dict) -> tuple[str, str]:
    lua = _runtime()
    result = lua.execute(SANDBOX)(SCRIPT, _to_lua(lua, obj))
    assert lupa51.lua_type(result) == "table", f"expect table output from Lua script, not {lupa51.lua_type(result)}"
    status, message = result["status"], result["message"] or ""
    if status not in VALID_HEALTH:
        return "Unknown", "Lua returned an invalid health status"
    return status, message


STATES = gitops_states.states()

EXPECTED = {
    "new": ("Progressing", "Waiting for the kubetune operator"),
    "pending": ("Progressing", "Pending: creating the training Job"),
    "pods-pending": ("Progressing", "Pending: waiting for the training pods to start"),
    "retrying": ("Progressing", "Pending: attempt failed: S3 timed out; retrying from the newest checkpoint"),
    "queued-by-kueue": ("Progressing", "Queued: waiting for Kueue LocalQueue 'team-a' to admit the Job"),
    "queued-by-namespace-cap": (
        "Progressing",
        "Queued: waiting: this namespace runs as many FineTuneJobs as the operator allows",
    ),
    "running": ("Progressing", "Training: step 1200/3000 (40%)"),
    "resumed": ("Progressing", "Running"),
    "suspended-by-spec": ("Suspended", "Suspended (spec.suspend: true)"),
    # Held by another controller (Kueue managing the namespace): queued until it lets the Job run, not suspended.
    "suspended-by-other": (
        "Progressing",
        "Queued: the Job was suspended by another controller, not by kubetune "
        "(Kueue does this to every Job of a namespace it manages with manageJobsWithoutQueueName): "
        "it starts when that controller admits it",
    ),
    "succeeded": ("Healthy", "Training complete"),
    "failed": ("Degraded", "UserError: spec.datasets[0]: column 'text' missing"),
    "invalid": ("Degraded", "SpecInvalid: invalid spec: spec.lora.rank: must be > 0"),
    "spec-edited": ("Progressing", "The operator has not yet seen the latest spec"),
    "deleting": ("Progressing", "Training: step 1200/3000 (40%)"),
}


def test_every_state_is_covered():
    assert set(EXPECTED) == set(STATES)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_health_in_argo_cds_sandbox(name):
    assert health(STATES[name]) == EXPECTED[name]


def test_only_a_suspension_by_the_spec_names_spec_suspend():
    for name, obj in STATES.items():
        claims_spec = "spec.suspend" in health(obj)[1]
        assert claims_spec == (obj["spec"].get("suspend") is True and obj["status"].get("phase") == "Suspended"), name


def test_succeeded_names_the_final_model():
    obj = STATES["succeeded"] | {"status": STATES["succeeded"]["status"] | {"output": {"modelUri": "s3://b/final/"}}}
    assert health(obj) == ("Healthy", "Training complete: s3://b/final/")


def test_a_float_percent_and_missing_step_still_render():
    obj = STATES["running"]
    obj = obj | {"status": obj["status"] | {"progress": {"totalSteps": 3000, "percent": 0}}}
    assert health(obj) == ("Progressing", "Training: step 0/3000 (0%)")


def test_the_sandbox_is_argo_cds():
    """What Argo CD refuses without useOpenLibs is refused here too, and what it opens works."""

    def run(script):
        lua = _runtime()
        return lua.execute(SANDBOX)(script, _to_lua(lua, {"metadata": {"name": "x"}}))

    for refused in (
        'return string.format("%d", 1)',
        'return ("x"):upper()',
        "return math.floor(1.5)",
        "return io.write('x')",
        "return os.getenv('HOME')",
        "return os.exit(1)",
        "return require('string')",
        "return loadstring('return string')().len('x')",
        "return debug.traceback()",
        "return coroutine.create(print)",
    ):
        with pytest.raises(lupa51.LuaError):
            run(refused)
    assert run("return table.concat({'a', 'b'}, '-') .. tostring(1200) .. #obj.metadata.name") == "a-b12001"
    assert (
        run("return type(os.time()) .. type(require('os').date) .. type(pcall) .. type(ipairs)")
        == "numberfunctionfunctionfunction"
    )
    assert run("return 1200 .. '/' .. 3000") == "1200/3000"
