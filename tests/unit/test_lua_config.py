"""function.lua entries: fields, load-time errors, imports, pools, lupa missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from lua_support import body_of, drive, run, write_app

from wippy_queue.errors import ConfigError
from wippy_queue.functions.lua.config import LuaFunctionConfig, LuaPool
from wippy_queue.loading import load
from wippy_queue.runtime import Runtime

HEAD = 'version: "1.0"\nnamespace: app\nentries:\n'


def entries(root: Path, body: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "_index.yaml").write_text(HEAD + body, encoding="utf-8")
    for name, text in (files or {"h.lua": "return function() end\n"}).items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def problems(root: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load([root])
    return str(info.value)


def test_unknown_module_is_a_load_error_listing_the_available_ones(tmp_path: Path) -> None:
    root = entries(
        tmp_path,
        "  - name: h\n    kind: function.lua\n    source: file://h.lua\n"
        "    modules: [json, http, fs]\n",
    )
    text = problems(root)
    assert "app:h" in text and "modules" in text
    assert "unknown modules 'http', 'fs'" in text
    assert "available modules: json, logger, queue, time" in text


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("file://missing.lua", "does not exist"),
        ("file://h.py", "is not a .lua file"),
        ("handler.lua", "neither file://path.lua nor inline Lua code"),
    ],
)
def test_source_must_be_a_lua_file_or_inline_code(
    tmp_path: Path, source: str, expected: str
) -> None:
    root = entries(tmp_path, f"  - name: h\n    kind: function.lua\n    source: {source}\n")
    (root / "h.py").write_text("", encoding="utf-8")
    assert expected in problems(root)


def test_imports_must_name_function_lua_entries(tmp_path: Path) -> None:
    root = entries(
        tmp_path,
        "  - name: mem\n    kind: queue.driver.memory\n"
        "  - name: h\n    kind: function.lua\n    source: file://h.lua\n"
        "    imports:\n      gone: app:missing\n      driver: mem\n",
    )
    text = problems(root)
    assert "imports.gone" in text and "'app:missing', which is not defined" in text
    assert "imports.driver" in text and "it must be function.lua" in text


def test_import_cycle_is_a_load_error(tmp_path: Path) -> None:
    root = entries(
        tmp_path,
        "  - name: a\n    kind: function.lua\n    source: file://h.lua\n"
        "    imports: {b: app:b}\n"
        "  - name: b\n    kind: function.lua\n    source: file://h.lua\n"
        "    imports: {a: a}\n",
    )
    assert "import cycle: app:a -> app:b -> app:a" in problems(root)


def test_import_alias_may_not_hide_a_module(tmp_path: Path) -> None:
    root = entries(
        tmp_path,
        "  - name: a\n    kind: function.lua\n    source: file://h.lua\n    imports: {json: b}\n"
        "  - name: b\n    kind: function.lua\n    source: file://h.lua\n",
    )
    assert "would hide the built-in module 'json'" in problems(root)


def test_pool_shapes_decide_the_number_of_states() -> None:
    src = "return function() end\n"
    assert LuaFunctionConfig(source=src).states(4) == 4
    assert LuaFunctionConfig(source=src, pool=2).states(4) == 2
    static = {"type": "static", "size": 3}
    assert LuaFunctionConfig.model_validate({"source": src, "pool": static}).states(8) == 3
    lazy = {"type": "lazy", "max_size": 5}
    assert LuaFunctionConfig.model_validate({"source": src, "pool": lazy}).states(8) == 5
    assert LuaPool(type="inline").states(6) == 6
    assert LuaPool(workers=2, size=7).states(1) == 7  # Wippy's legacy implicit static pool
    with pytest.raises(ValueError, match="a static pool needs 'size'"):
        LuaPool(type="static")
    with pytest.raises(ValueError, match="out of range"):
        LuaFunctionConfig(source=src, pool=0)


def test_limits_have_defaults_and_bounds() -> None:
    config = LuaFunctionConfig(source="return function() end\n")
    assert config.limits.instructions == 100_000_000
    assert config.limits.memory_mb == 64
    with pytest.raises(ValueError):
        LuaFunctionConfig.model_validate({"source": "x\n", "limits": {"instructions": 10}})
    with pytest.raises(ValueError):
        LuaFunctionConfig.model_validate({"source": "x\n", "limits": {"cpu": 1}})


def test_syntax_error_is_a_load_error_not_a_nack(tmp_path: Path) -> None:
    root = write_app(tmp_path, "return function(body) if then end\n")
    with pytest.raises(ConfigError) as info:
        Runtime.load(root)
    text = str(info.value)
    assert "app:handler" in text and "Lua syntax error" in text and "handler.lua:1" in text


def test_without_lupa_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_app(tmp_path, "return function() end\n")
    monkeypatch.setitem(sys.modules, "lupa", None)
    monkeypatch.setitem(sys.modules, "lupa.lua51", None)
    with pytest.raises(ConfigError) as info:
        Runtime.load(root)
    assert "pip install 'lupa>=2.0'" in str(info.value)


def test_chunk_must_return_the_handler(tmp_path: Path) -> None:
    root = write_app(tmp_path, "return {handler = function() end}\n")

    # refused when it loads (validate says so), as a start would refuse it
    with pytest.raises(ConfigError, match="returned a table, not the handler function"):
        Runtime.load(root)


@pytest.mark.parametrize(
    "lua",
    [
        "local function main(body) return true end\nreturn {main = main}\n",
        "function main(body) return true end\n",
    ],
)
def test_method_names_the_handler(tmp_path: Path, lua: str) -> None:
    root = write_app(tmp_path, lua, handler={"method": "main"})
    assert run(drive(root, [{"n": 1}]))["dead"] == []


def test_imports_are_required_by_alias_with_their_own_modules(tmp_path: Path) -> None:
    lua = """
        local lib = require("util")
        local queue = require("queue")
        return function(body)
            queue.publish("app:out", {double = lib.double(body.n), json = lib.json_ok()})
        end
    """
    root = write_app(tmp_path, lua, handler={"modules": ["queue"], "imports": {"util": "lib"}})
    (root / "lib.lua").write_text(
        "local M = {}\n"
        "function M.double(n) return n * 2 end\n"
        "function M.json_ok() return (pcall(require, 'queue')) end\n"
        "return M\n",
        encoding="utf-8",
    )
    with (root / "_index.yaml").open("a", encoding="utf-8") as f:
        f.write("  - name: lib\n    kind: function.lua\n    source: file://lib.lua\n")
    result = run(drive(root, [{"n": 21}]))
    # the library lists no modules, so it may not require 'queue' although its importer may
    assert [body_of(m) for m in result["out"]] == [{"double": 42, "json": False}]
