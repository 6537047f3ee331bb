"""The seed's code blocks: copied verbatim, all of them, and they type-check and compile."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import seed_blocks
from helpers import REPO

from fastvm import FastVM


def seed_path() -> Path | None:
    for candidate in (
        os.environ.get("FASTVM_PY_SEED"),
        REPO.parent / "shared" / "seed" / "fastvm-python-sdk.md",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def test_blocks_are_the_seeds_verbatim_and_complete() -> None:
    path = seed_path()
    if path is None:
        pytest.skip("the seed document is not available here (set FASTVM_PY_SEED)")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    starts = [i + 1 for i, line in enumerate(lines) if line.rstrip("\n") == "python"]
    assert len(starts) == len(seed_blocks.ALL)
    for start, block in zip(starts, seed_blocks.ALL):
        following = "".join(lines[start:]) + "\n"
        assert following.startswith(block + "\n"), block.splitlines()[0]


@pytest.mark.parametrize("block", seed_blocks.ALL)
def test_every_block_compiles(block: str) -> None:
    compile(block, "<seed>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_configuration_block() -> None:
    ns: dict[str, object] = {"FastVM": FastVM}
    exec(compile(seed_blocks.CONFIGURATION, "<seed>", "exec"), ns)
    client = ns["client"]
    assert isinstance(client, FastVM)
    assert (client.api_key, client.base_url, client.timeout) == (
        "your-key",
        "https://api.fastvm.org",
        300.0,
    )


def test_blocks_type_check_under_mypy_strict(tmp_path: Path) -> None:
    """Each block, as the body of a function whose parameters are the names it uses, passes
    ``mypy --strict``: the SDK's types fit the seed's examples."""
    mypy_api = pytest.importorskip("mypy.api")
    module_level = {seed_blocks.QUICK_START, seed_blocks.CONFIGURATION}
    parts = [
        "import asyncio",
        "from fastvm import FastVM, FirewallPolicy, PatchFirewallPolicy, Snapshot, VM",
        "",
    ]
    for i, block in enumerate(seed_blocks.ALL):
        if block in module_level:
            continue
        parts.append(
            f"async def block_{i}(client: FastVM, vm: VM, base_vm: VM, snapshot: Snapshot, "
            "snap: Snapshot) -> None:"
        )
        parts += ["    " + line if line else "" for line in block.splitlines()]
        parts.append("")
    (tmp_path / "seed_functions.py").write_text("\n".join(parts) + "\n")
    for block in module_level:
        name = "seed_quick_start.py" if block is seed_blocks.QUICK_START else "seed_config.py"
        # The Quick Start's `async def main():` has no annotations; its body is still checked.
        prefix = (
            "# mypy: allow-untyped-defs, allow-untyped-calls, check-untyped-defs\n"
            if block is seed_blocks.QUICK_START
            else "from fastvm import FastVM\n"
        )
        (tmp_path / name).write_text(prefix + block + "\n")
    cache = Path(__file__).resolve().parents[1] / ".mypy_cache"
    out, err, status = mypy_api.run(
        ["--strict", "--cache-dir", str(cache), "--no-error-summary", str(tmp_path)]
    )
    assert status == 0, out + err
