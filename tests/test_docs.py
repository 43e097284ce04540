"""The docs cannot rot silently: README.md and docs/*.md parsed with markdown-it-py (a CommonMark parser, installed
with rich) and checked for relative links and ``#anchors`` that do not resolve, ``pst-yolo`` sub-commands or options
in code that the command does not accept, and PST model or recipe names that do not load by name. Each check is shown
failing on a deliberately broken copy."""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MODEL = re.compile(r"(/?)\b((?:yolo\d+|r\d+)[\w{},-]*-pst[\w{},-]*\.yaml|pst-(?:det|cls)[\w{},-]*\.yaml)")
# A name after a "/" is a file path (a study variant in docs/accuracy/models/, a generated <out>/models/ file), not a
# name to load; file links are checked as links.
COMMAND = re.compile(r"(?:^|[\s;&|(`])pst-yolo\s+([a-z][\w-]*)([^\n`|;&]*)")


def slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def parse(path: Path):
    """(anchors, links, code snippets) of a Markdown file."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(path.read_text())
    anchors, links, code, seen = set(), [], [], {}
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            base = slug(tokens[i + 1].content)
            n = seen.get(base, 0)
            seen[base] = n + 1
            anchors.add(base if n == 0 else f"{base}-{n}")
        if tok.type in ("fence", "code_block"):
            code.append(tok.content)
        for child in tok.children or []:
            if child.type == "link_open":
                links.append(child.attrs.get("href", ""))
            if child.type == "image":
                links.append(child.attrs.get("src", ""))
            if child.type == "code_inline":
                code.append(child.content)
    return anchors, links, code


def expand(name: str) -> list:
    """``yolo11{n,s}-pst.yaml`` -> its names."""
    parts = re.split(r"\{([^}]*)\}", name)
    choices = [p.split(",") if i % 2 else [p] for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def loads(name: str) -> bool:
    from ultralytics.nn.tasks import yaml_model_load
    from ultralytics.utils.checks import check_yaml

    try:
        yaml_model_load(name) if not name.startswith("pst-") else check_yaml(name)
        return True
    except Exception:  # noqa: BLE001 - any failure to resolve is the finding
        return False


def problems(paths) -> list:
    """Every finding in the Markdown files ``paths``, as "file: what"."""
    import ultralytics.nn.tasks  # noqa: F401  (registers the shipped YAMLs)

    from pst_yolo.tools.cli import COMMANDS

    parsed = {p.resolve(): parse(p) for p in paths}
    found, options = [], {}
    for path, (_, links, code) in parsed.items():
        where = path.name
        for href in links:
            if not href or re.match(r"^[a-z]+:", href):
                continue
            target, _, anchor = href.partition("#")
            dest = (path.parent / target).resolve() if target else path
            if not dest.exists():
                found.append(f"{where}: link to {href!r}: no such file")
            elif anchor and dest.suffix == ".md":
                anchors = parsed[dest][0] if dest in parsed else parse(dest)[0]
                if anchor not in anchors:
                    found.append(f"{where}: link to {href!r}: no heading with that anchor")
        for snippet in code:
            for m in COMMAND.finditer(snippet):
                name, rest = m.group(1), m.group(2)
                if name in ("help", "version"):
                    continue
                if name not in COMMANDS:
                    found.append(f"{where}: `pst-yolo {name}`: no such sub-command")
                    continue
                if name not in options:
                    import importlib

                    module = importlib.import_module(f"pst_yolo.tools.{COMMANDS[name][0]}")
                    options[name] = {s for a in module.parser()._actions for s in a.option_strings}
                for flag in re.findall(r"(?:^|\s)(--[a-z][\w-]*)", rest):
                    if flag not in options[name]:
                        found.append(f"{where}: `pst-yolo {name} {flag}`: no such option")
            for m in MODEL.finditer(snippet):
                for name in expand(m.group(2)):
                    if m.group(1):
                        continue
                    if not loads(name):
                        found.append(f"{where}: model or recipe {name!r} does not load by name")
    return found


def test_readme_and_docs_have_no_broken_links_commands_or_model_names():
    assert problems(DOCS) == []


def test_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    quick = next(i for i, line in enumerate(lines) if line.startswith("## Quickstart"))
    assert quick < 80 and any("yolo export" in line for line in lines[quick:80])
    assert 'python -m pip install -e ".[export]" && pst-yolo demo' in lines[:12]
    assert 'python -m pip install -e ".[test]" && python -m pytest -q' in lines[:16]


@pytest.mark.parametrize("breakage, finding", [
    ("[usage](docs/nowhere.md)", "no such file"),
    ("[usage](docs/usage.md#no-such-heading)", "no heading with that anchor"),
    ("[here](#no-such-section)", "no heading with that anchor"),
    ("```bash\npst-yolo benhc --sizes 640\n```", "no such sub-command"),
    ("```bash\npst-yolo bench --sizez 640\n```", "no such option"),
    ("Train `yolo11n-pst-rez.yaml`.", "does not load by name"),
    ("Recipe `cfg=pst-det-q.yaml`.", "does not load by name"),
])
def test_each_check_fails_on_a_broken_copy(tmp_path, breakage, finding):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "docs", root / "docs")
    for name in ("README.md", "CHANGELOG.md", "LICENSE"):
        shutil.copy(REPO / name, root / name)
    for folder in ("pst_yolo", "cfg", "tests", "scripts"):
        (root / folder).symlink_to(REPO / folder)
    readme = root / "README.md"
    readme.write_text(readme.read_text() + "\n\n" + breakage + "\n")
    found = problems([readme])
    assert len(found) == 1 and finding in found[0], found
