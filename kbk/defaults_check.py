"""A check of the config files' defaults lists before Hydra composes them.

YAML 1.1 reads the bare words off, on, yes, no, true, false as booleans, so a preset line such as
`- override /koopman: off` means "the koopman group's option False", and Hydra stops with a stack trace ending in
"Unsupported item value in defaults : bool". kbk's option `koopman=off` is the usual victim. This module finds such
a line in kbk's conf/ and in the folders of `hydra.searchpath=[file://...]` on the command line, and names the file,
the line and the fix (quote the option) before Hydra reads anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from kbk.errors import KbkError

# A defaults-list line `- [override ]group: <bare YAML 1.1 boolean>`; the YAML parser confirms each suspect.
_SUSPECT = re.compile(r"^\s*-\s*((?:override\s+)?[\w/@.]+)\s*:\s*(off|on|yes|no|true|false|y|n)\s*(?:#.*)?$",
                      re.IGNORECASE)


def searchpath_folders(argv: Sequence[str]) -> list[Path]:
    """The local folders a `hydra.searchpath=[file://a,file://b]` override on the command line adds."""
    folders = []
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if not sep or key != "hydra.searchpath":
            continue
        for item in value.strip("[]").split(","):
            item = item.strip().strip("'\"")
            if item.startswith("file://"):
                folders.append(Path(item[len("file://"):]))
    return folders


def boolean_defaults(folders: Iterable[Path]) -> list[str]:
    """One description per defaults-list item whose option YAML reads as a boolean, in the YAML files under
    `folders`."""
    import yaml

    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*.yaml")) if folder.is_dir() else []:
            text = path.read_text(errors="replace")
            suspects = [(n, m.group(1), m.group(2)) for n, line in enumerate(text.splitlines(), 1)
                        if (m := _SUSPECT.match(line))]
            if not suspects:
                continue
            try:
                defaults = (yaml.safe_load(text) or {}).get("defaults") or []
            except (yaml.YAMLError, AttributeError):
                continue  # not a mapping, or not YAML at all: Hydra reports that itself
            booleans = {group for item in defaults if isinstance(item, dict)
                        for group, option in item.items() if isinstance(option, bool)}
            found += [f"{path} line {n}: `{group}: {word}` reads as the boolean "
                      f"{'true' if word.lower() in ('on', 'yes', 'y', 'true') else 'false'} in YAML, not the option "
                      f"'{word}'. Fix: quote it: `{group}: \"{word}\"`"
                      for n, group, word in suspects if group in booleans]
    return found


def check(argv: Sequence[str], conf_dir: Path) -> None:
    """Raise a KbkError naming the first defaults item that YAML reads as a boolean."""
    problems = boolean_defaults([conf_dir, *searchpath_folders(argv)])
    if problems:
        raise KbkError(problems[0])
