"""The repository documents itself: no reference leaves it, every documentation link and section
named in it exists, the licence and extras match pyproject.toml, and the packages keep their layers."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Built from parts, so that this file does not contain what it looks for.
OUTSIDE_NEEDLES = ("../" + "shared", "SPEC" + ".md", "DESIGN" + ".md", "STYLE" + ".md")



def layers() -> dict[str, int]:
    """Layer of every package and top-level module of ``neumours``, read from the table under
    "## Layering" in docs/architecture.md (the one place it is written down)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Layering", 1)[1].split("\n## ", 1)[0]
    table = {}
    for number, names in re.findall(r"^\| (\d+) \| (.+) \|$", section, flags=re.MULTILINE):
        table.update({name: int(number) for name in re.findall(r"`(\w+)`", names)})
    assert table, "docs/architecture.md has no layering table"
    return table


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in names.decode().split("\0") if name and (ROOT / name).is_file()]


def tracked_texts() -> dict[Path, str]:
    texts = {}
    for path in tracked_files():
        try:
            texts[path] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # images and other binary files
            continue
    return texts


def test_no_tracked_file_points_outside_the_repository():
    found = [f"{path.relative_to(ROOT)}: {needle}" for path, text in tracked_texts().items()
             for needle in OUTSIDE_NEEDLES if needle in text]
    assert not found, "references to files outside the repository:\n" + "\n".join(found)


def test_every_docs_page_mentioned_exists():
    mentioned = {(path.relative_to(ROOT), name) for path, text in tracked_texts().items()
                 for name in re.findall(r"\bdocs/([\w-]+\.md)", text)}
    assert mentioned, "expected docs/ pages to be referenced"
    missing = [f"{where}: docs/{name}" for where, name in sorted(mentioned) if not (ROOT / "docs" / name).is_file()]
    assert not missing, "\n".join(missing)


def test_relative_markdown_links_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "\n".join(broken)


def test_method_sections_named_in_the_code_exist():
    text = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    headings = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}
    named = {(path.relative_to(ROOT), section) for path, body in tracked_texts().items()
             for section in re.findall(r'method\.md\)? "([^"]+)"', body)}
    assert named, "expected sections of docs/method.md to be named in the code"
    missing = [f'{where}: "{section}"' for where, section in sorted(named) if section not in headings]
    assert not missing, "sections not in docs/method.md:\n" + "\n".join(missing)


def test_license_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    licence = project["license"]["text"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.splitlines()[0] == f"{licence} License"
    assert re.search(r"Copyright \(c\) \d{4} the Neumours authors", text)


def test_readme_lists_every_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in extras if f"| `{name}` |" not in readme]
    assert not missing, f"README's extras table lacks {missing}"


def _imported_packages(path: Path) -> set[str]:
    """Top-level ``neumours`` packages or modules that ``path`` imports (also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "neumours" else [f"neumours.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("neumours.")}
    return found


def test_no_import_from_a_lower_layer_up():
    layer = layers()
    package = ROOT / "neumours"
    unknown, upward = set(), []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts == ("__init__",):
            continue
        own = parts[0]
        if own not in layer:
            unknown.add(own)
            continue
        for other in _imported_packages(path) - {own}:
            if other not in layer:
                unknown.add(other)
            elif layer[other] >= layer[own]:
                upward.append(f"{path.relative_to(ROOT)} (layer {layer[own]}) imports neumours.{other} "
                              f"(layer {layer[other]})")
    assert not unknown, f"give {sorted(unknown)} a layer in the Layering table of docs/architecture.md"
    assert not upward, "\n".join(upward)


def test_renderer_imports_neither_inference_nor_refinement():
    imported = set().union(*(_imported_packages(p) for p in (ROOT / "neumours" / "render").rglob("*.py")))
    assert not imported & {"infer", "refine", "train", "model"}


def test_no_import_cycle_between_modules():
    """No two modules of ``neumours`` import each other, directly or through others (also inside functions)."""
    package = ROOT / "neumours"
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                candidates = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            # a module's own packages (their __init__) are not a cycle: Python imports them first anyway
            deps |= {c for c in candidates if c in modules and c != name and not name.startswith(c + ".")}
        graph[name] = deps
    cycles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)
