"""A griffe extension for the API pages: mmfuse's docstrings as the site should show them.

The docstrings follow the house style (Google sections, ``Example:`` with ``>>>`` lines, Sphinx
roles such as :class:`X` for cross-references). Griffe's Google parser reads only ``Examples:``
as an examples section (``Example:`` becomes an admonition whose ``>>>`` lines render as one
paragraph), and it leaves Sphinx roles as text. Before the docstrings are parsed, this
extension:

- renames ``Example:`` sections to ``Examples:``, so doctest lines render as code blocks;
- turns each role (``:class:``, ``:func:``, ``:meth:``, ``:attr:``, ``:data:``, ``:mod:``,
  ``:exc:``, ``:obj:``) into a link to the object's entry on the API pages when that object is
  shown there, and into inline code otherwise (private helpers, torch names).

Loaded by mkdocstrings (``extensions`` in mkdocs.yml); not part of the package.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):`(~?)([^`]+)`")
EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)
API_PAGES = Path(__file__).resolve().parents[1] / "api"


def _shown(obj: Any) -> bool:
    """Whether mkdocstrings renders ``obj`` (it has a docstring)."""
    return bool(obj.docstring and obj.docstring.value.strip())


def _target(obj: Any) -> Any:
    """The object an alias points to (``obj`` itself if not an alias); None if unresolvable."""
    if not obj.is_alias:
        return obj
    try:
        return obj.final_target
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None  # e.g. `from __future__ import annotations`


def _canonical(obj: Any) -> str | None:
    target = _target(obj)
    return None if target is None else str(target.path)


class RenderDocstrings(griffe.Extension):
    """Rewrite examples and Sphinx roles in every docstring of the loaded package."""

    def on_package(self, *, pkg: Any, **kwargs: Any) -> None:
        roots = [line.split(":::", 1)[1].split()[0] for page in sorted(API_PAGES.glob("*.md"))
                 for line in page.read_text().splitlines() if line.startswith(":::")]
        self.anchors: dict[str, str] = {}  # canonical path -> the id of its entry on a page
        self.roots = {".".join(root.split(".")[:2]) for root in roots}
        for root in roots:
            if root.split(".")[0] != pkg.name:
                continue
            try:
                obj = pkg.modules_collection[root]
            except KeyError:
                continue
            self._index(obj, root)
        self._rewrite(pkg, set())

    on_package_loaded = on_package  # the hook's name before griffe 1.0

    def _index(self, obj: Any, shown_as: str) -> None:
        """Record ``obj`` (shown under ``shown_as``) and its rendered members."""
        path = _canonical(obj)
        if path is not None:
            self.anchors.setdefault(path, shown_as)
        self.anchors.setdefault(shown_as, shown_as)
        target = _target(obj)
        for name, member in ({} if target is None else target.members).items():
            resolved = _target(member)
            if resolved is None or resolved.is_module or re.match(r"_[^_]", name):
                continue  # not rendered (submodules are not shown on a package's page)
            if not _shown(resolved) or (target.is_module and not member.is_public):
                continue  # no docstring, or an import rather than an export
            self._index(member, f"{shown_as}.{name}")

    def _rewrite(self, obj: Any, seen: set[int]) -> None:
        if obj.is_alias or id(obj) in seen:
            return
        seen.add(id(obj))
        if obj.docstring is not None:
            text = EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = ROLE.sub(lambda m: self._role(m, obj), text)
        for member in obj.members.values():
            self._rewrite(member, seen)

    def _role(self, match: re.Match[str], where: Any) -> str:
        tilde, name = match.groups()
        shown = name.rsplit(".", 1)[-1] if tilde else name
        anchor = self._resolve(name, where)
        return f"[`{shown}`][{anchor}]" if anchor else f"`{shown}`"

    def _resolve(self, name: str, where: Any) -> str | None:
        """The page id of ``name`` as seen from the docstring of ``where``, or None."""
        if name in self.anchors:
            return self.anchors[name]
        first, _, rest = name.partition(".")
        scope = where
        while scope is not None:  # the object itself, its class, its module, the package
            if first in scope.members:
                obj = scope.members[first]
                for part in rest.split(".") if rest else []:
                    target = _target(obj)
                    if target is None or part not in target.members:
                        return None
                    obj = target.members[part]
                path = _canonical(obj)
                return self.anchors.get(path) if path else None
            scope = scope.parent
        # not in scope (e.g. named in prose only): a unique documented object of that name
        found = {self.anchors[path] for path in self.anchors
                 if path.endswith(f".{name}") and ".".join(path.split(".")[:2]) in self.roots}
        return found.pop() if len(found) == 1 else None
