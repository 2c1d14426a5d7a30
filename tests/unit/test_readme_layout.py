"""README's Layout section covers the package: every module directly under openspeedy/ by its file name,
every sub-package by a folder line (which covers the modules inside it), and names nothing that is gone."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "openspeedy"


def layout_tree(readme: str) -> list[str]:
    """The lines of the Layout section's code block that describe openspeedy/ (indented under it)."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1].splitlines()
    start = block.index("openspeedy/")
    tree = []
    for line in block[start + 1:]:
        if not line.startswith(" "):
            break
        tree.append(line)
    return tree


def named(tree: list[str]) -> tuple[set[str], set[str]]:
    """File names (``cache.py``) anywhere in the tree, and folder names that begin an entry (``unet/``)."""
    files = {name for line in tree for name in re.findall(r"\b[\w]+\.py\b", line)}
    folders = {match.group(1) for line in tree if (match := re.match(r"  (\w+)/ ", line))}
    return files, folders


def missing_and_stale(readme: str, package: Path) -> tuple[list[str], list[str]]:
    files, folders = named(layout_tree(readme))
    modules = {path.name for path in package.glob("*.py") if path.name != "__init__.py"}
    packages = {path.parent.name for path in package.glob("*/__init__.py")}
    existing = {path.name for path in package.rglob("*.py")}
    missing = sorted(modules - files) + sorted(f"{name}/" for name in packages - folders)
    stale = sorted(files - existing) + sorted(f"{name}/" for name in folders - packages)
    return missing, stale


def test_every_module_and_sub_package_is_in_the_readme_layout():
    missing, stale = missing_and_stale((ROOT / "README.md").read_text(), PACKAGE)
    assert missing == [], f"README.md's Layout section lacks {missing}: add a line for each"
    assert stale == [], f"README.md's Layout section names {stale}, which openspeedy/ no longer has"


def test_a_module_or_folder_left_out_and_a_stale_name_are_found(tmp_path):
    (tmp_path / "unet").mkdir()
    for path in ("__init__.py", "pipeline.py", "new_module.py", "unet/__init__.py", "unet/kernel.py"):
        (tmp_path / path).write_text("")
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "__init__.py").write_text("")
    readme = ("# X\n\n## Layout\n\n```\nopenspeedy/\n  pipeline.py         the loop\n"
              "  unet/               kernels: kernel.py, gone.py\nmodel_repository/   adapters\n```\n\n## Next\n")
    assert missing_and_stale(readme, tmp_path) == (["new_module.py", "fresh/"], ["gone.py"])
