"""Private attributes of the libraries we build on are used only where a line says so:
``# private: <library> <versions tested>``, on the line or the line above. This test lists those
tags, checks that the installed library is one of the versions a tag names, and that
``pyproject.toml`` bounds the library's versions from above, so that an upgrade that may break a
private use is a decision, not an accident."""

from __future__ import annotations

import io
import re
import tokenize
from importlib.metadata import version
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"
TAG = re.compile(r"#\s*private:\s*(?P<library>[\w-]+)\s+(?P<versions>[\d.]+(?:-[\d.]+)?)")
# The distribution and pyproject requirement of each library a tag may name.
DISTRIBUTIONS = {
    "lightning": "lightning",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "optuna": "optuna",
    "torch": "torch",
    "submitit": "submitit",
}
# Hydra's reserved config keys, and standard-library names that are public despite their underscore.
PUBLIC = {"_target_", "_partial_", "_args_", "_convert_", "_recursive_", "_exit"}


def _sources() -> list[Path]:
    return sorted(p for package in ("experiments", "hydra_plugins") for p in (SRC / package).rglob("*.py"))


def _our_names() -> set[str]:
    """Underscore names this package defines (functions, attributes, module globals, classes)."""
    names: set[str] = set()
    for path in _sources():
        text = path.read_text()
        names |= set(re.findall(r"\bdef (_\w+)", text))
        names |= set(re.findall(r"\bclass (_\w+)", text))
        names |= set(re.findall(r"(?:self|cls)\.(_\w+)\s*(?::[^=\n]*)?=(?!=)", text))
        names |= set(re.findall(r"^\s*(_\w+)\s*[:=]", text, re.M))
    return names


def _private_uses() -> list[tuple[Path, int, str]]:
    """Every ``.​_name`` (attribute or module path) that is not ours, outside strings and comments."""
    ours = _our_names()
    found = []
    for path in _sources():
        tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
        for before, token in zip(tokens, tokens[1:]):
            name = token.string
            if (
                before.type == tokenize.OP
                and before.string == "."
                and token.type == tokenize.NAME
                and name.startswith("_")
                and not name.startswith("__")
                and name not in PUBLIC
                and name not in ours
            ):
                found.append((path, token.start[0], name))
    return found


def _tags() -> list[tuple[Path, int, str, str]]:
    return [
        (path, number, match["library"], match["versions"])
        for path in _sources()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if (match := TAG.search(line))
    ]


def test_every_private_use_is_tagged() -> None:
    tagged = {(path, number) for path, number, _, _ in _tags()}
    untagged = [
        f"{path.relative_to(REPO)}:{number}: .{name}"
        for path, number, name in _private_uses()
        if (path, number) not in tagged and (path, number - 1) not in tagged
    ]
    assert not untagged, "tag each with '# private: <library> <versions tested>':\n" + "\n".join(untagged)


def _matches(installed: str, versions: str) -> bool:
    """Whether ``installed`` (2.6.6) is one of ``versions``: a version prefix (2.6) or a range of them (4-5)."""
    low, _, high = versions.partition("-")
    parts = [int(p) for p in re.findall(r"\d+", installed)]

    def key(prefix: str) -> list[int]:
        return parts[: len(prefix.split("."))]

    def number(prefix: str) -> list[int]:
        return [int(p) for p in prefix.split(".")]

    return number(low) <= key(low) and key(high or low) <= number(high or low)


def test_tags_name_the_installed_versions_and_pyproject_bounds_them() -> None:
    tags = _tags()
    assert tags, "no tag found: the pattern or the sources moved"
    pyproject = (REPO / "pyproject.toml").read_text()
    for library in sorted({library for _, _, library, _ in tags}):
        assert library in DISTRIBUTIONS, f"a tag names {library!r}; add it to DISTRIBUTIONS"
        distribution = DISTRIBUTIONS[library]
        requirement = re.search(rf'"{re.escape(distribution)}\s*(?P<spec>[<>=!~][^"]*)"', pyproject)
        assert requirement and "<" in requirement["spec"], (
            f"pyproject.toml must bound {distribution} from above: {library}'s private attributes are used"
        )
        installed = version(distribution)
        for path, number, tagged, versions in tags:
            if tagged == library:
                assert _matches(installed, versions), (
                    f"{path.relative_to(REPO)}:{number} was tested on {library} {versions}, but {installed} is "
                    "installed: check the private use and update its tag (and pyproject.toml's bounds)"
                )
