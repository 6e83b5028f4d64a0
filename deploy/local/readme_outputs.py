"""The README's captured command outputs, regenerated on a running local stack.

    python -m deploy.local.readme_outputs [--root .georep]      (make readme-outputs)

Each README block marked `<!-- captured -->` holds `$ georep …` commands and what they printed. This pushes the
images the examples talk about (team-a/app0..5:v1, team-a/app0:v1-debug, team-b/tool:v2), gives the example
replica ap-tokyo a bucket on the stack's first S3 server, runs every command in README order (cloud addresses
swapped for the stack's own: `LOCAL`), writes what each printed back under it, and deletes ap-tokyo again.
`tests/integration/test_readme_outputs.py` runs the same on the test stack and checks that the README's tables
and messages have the shape the commands print today, so the README cannot go stale unnoticed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aioboto3
from botocore.exceptions import ClientError

from deploy.local import images, skopeo, stack

ROOT: Final = Path(__file__).resolve().parents[2]
README: Final = ROOT / "README.md"
MARK: Final = "<!-- captured -->"
REGION: Final = "ap-tokyo"
BUCKET: Final = "georep-ap-tokyo"
#: what the examples say, and what stands for it on the local stack
CLOUD_ENDPOINT: Final = "https://s3.ap-northeast-1.amazonaws.com"
CLOUD_KEYS: Final = "file:/var/run/secrets/georep-s3"
KiB: Final = 1024


@dataclass(frozen=True, slots=True)
class Block:
    start: int  # index of the first line after the opening fence
    end: int  # index of the closing fence
    commands: list[tuple[str, list[str]]]  # (command as written, lines it printed in the README)


def blocks(lines: list[str]) -> list[Block]:
    """Every captured block: a fence right after MARK, holding `$ ` commands (continued with a trailing `\\`)."""
    found = []
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        start = i + 2
        end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
        commands: list[tuple[str, list[str]]] = []
        j = start
        while j < end:
            command = lines[j].removeprefix("$ ")
            while command.endswith("\\"):
                j += 1
                command = command[:-1] + " " + lines[j].strip()
            j += 1
            printed = []
            while j < end and not lines[j].startswith("$ "):
                printed.append(lines[j])
                j += 1
            commands.append((" ".join(command.split()), printed))
        found.append(Block(start, end, commands))
    return found


async def prepare(info: dict[str, Any], root: Path, work: Path) -> dict[str, str]:
    """The examples' images on the primary, ap-tokyo's bucket and keys; returns the cloud -> local swaps."""
    seeds = [(f"team-a/app{i}", "v1", 100 * KiB) for i in range(6)]
    seeds += [("team-a/app0", "v1-debug", 100 * KiB), ("team-b/tool", "v2", 50 * KiB)]
    for repository, tag, size in seeds:
        layout = work / f"{repository.replace('/', '_')}-{tag}"
        img = images.image([images.layer(size, f"readme-{repository}-{tag}-{n}") for n in range(3)])
        images.write_image(layout, tag, img)
        await asyncio.to_thread(skopeo.push, layout, tag, f"{info['primary']}/{repository}:{tag}")
    region = next(iter(info["regions"].values()))
    async with aioboto3.Session().client(
        "s3", endpoint_url=region["s3"], aws_access_key_id=region["access_key"],
        aws_secret_access_key=region["secret_key"], region_name="us-east-1",
    ) as s3:  # fmt: skip
        try:
            await s3.create_bucket(Bucket=BUCKET)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                raise
    keys = root / "credentials" / f"{REGION}.json"
    keys.parent.mkdir(parents=True, exist_ok=True)
    keys.write_text(json.dumps({"access_key": region["access_key"], "secret_key": region["secret_key"]}))
    keys.chmod(0o600)
    return {CLOUD_ENDPOINT: region["s3"], CLOUD_KEYS: f"file:{keys}"}


async def run(command: str, config: str, swaps: dict[str, str]) -> list[str]:
    """What `command` printed (stdout, then stderr, as a terminal shows a command's lines), one list of lines."""
    for cloud, local in swaps.items():
        command = command.replace(cloud, local)
    argv = shlex.split(command)
    assert argv[0] == "georep", command
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOREP_")} | {"COLUMNS": "160"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "georep", "--config", config, *argv[1:], env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return [line.rstrip() for line in (out.decode() + err.decode()).rstrip("\n").splitlines()]


async def capture(info: dict[str, Any], root: Path, text: str, work: Path) -> list[tuple[str, list[str], list[str]]]:
    """(command, what the README shows, what it prints now) for every captured command, in README order."""
    swaps = await prepare(info, root, work)
    captured = []
    try:
        for block in blocks(text.splitlines()):
            for command, shown in block.commands:
                captured.append((command, shown, await run(command, info["config"], swaps)))
    finally:
        await run(f"georep replicas delete {REGION}", info["config"], swaps)
    return captured


def rewrite(text: str, fresh: list[list[str]]) -> str:
    """`text` with each captured command's output replaced by `fresh`, in order."""
    lines = text.splitlines()
    out: list[str] = []
    position = 0
    outputs = iter(fresh)
    for block in blocks(lines):
        out += lines[position : block.start]
        for command, _ in block.commands:
            out += _wrapped(command)
            out += next(outputs)
        position = block.end
    out += lines[position:]
    return "\n".join(out) + "\n"


def _wrapped(command: str, width: int = 118) -> list[str]:
    """`$ command`, continued over lines at word boundaries as the README writes long ones."""
    words, lines, line = command.split(), [], "$"
    for word in words:
        if len(line) + 1 + len(word) > width and line not in ("$",):
            lines.append(line + " \\")
            line = "   "
        line += " " + word
    return [*lines, line]


#: what varies between two runs of the same example: digests, times, sizes and counts, ports, ages
_VARYING: Final[list[tuple[re.Pattern[str], str]]] = [
    (re.compile(r"sha256:[0-9a-f]+"), "sha256:…"),
    (re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+"), "TIME"),
    (re.compile(r"127\.0\.0\.1:\d+"), "HOST"),
    (re.compile(r"\d+(\.\d+)?"), "N"),
    (re.compile(r"[━─┄]+"), "—"),
    (re.compile(r"\s+"), " "),
]


def shape(line: str) -> str:
    for pattern, stands_for in _VARYING:
        line = pattern.sub(stands_for, line)
    return line.strip()


def headings(lines: list[str]) -> list[str]:
    """The lines that give an output its shape: table titles and header rows, and messages (not table rows)."""
    return [shape(line) for line in lines if _heading(line)]


def _heading(line: str) -> bool:
    return "┃" in line or (bool(line.strip()) and not line.startswith(("│", "┏", "┡", "└", "┗")))


async def main_async(args: argparse.Namespace) -> None:
    info = json.loads((args.root / stack.STACK_FILE).read_text())
    text = README.read_text()
    with tempfile.TemporaryDirectory(prefix="georep-readme-") as work:
        captured = await capture(info, args.root, text, Path(work))
    README.write_text(rewrite(text, [now for _, _, now in captured]))
    print(f"rewrote {len(captured)} captured outputs in {README}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.readme_outputs")
    parser.add_argument("--root", type=Path, default=ROOT / ".georep", help="the stack's directory (make up's)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
