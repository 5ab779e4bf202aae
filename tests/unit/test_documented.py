"""Every list setting and configuration key is documented (datasette's documentation test).

* a list setting (listserv/core/settings.py) must be named in README.md (in code: `name` or a
  code block) and listed by ``listserv list set --help``;
* a configuration key (listserv/core/config.py) must appear in README.md (a ```toml block, a dotted
  `section.key`, or `[section] key = ...`) and in the config block of interface.md, read from
  ../shared/interface.md next to the repository when it exists (README only otherwise).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from click.testing import CliRunner

from listserv.core import config, settings
from listserv.cli import cli

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
INTERFACE = REPO.parent / "shared" / "interface.md"

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
SPAN = re.compile(r"`([^`]+)`")
SECTION_LINE = re.compile(r"^\s*\[(\w+)\]\s*(#.*)?$")
KEY_LINE = re.compile(r"^\s*#?\s*(\w+)\s*=")


def config_keys() -> set[str]:
    """'data_dir', 'site_domain', 'intake.port', ... from the config dataclasses."""
    keys = {f.name for f in dataclasses.fields(config.Settings) if f.name not in config.SECTIONS}
    for section, cls in config.SECTIONS.items():
        keys |= {f"{section}.{f.name}" for f in dataclasses.fields(cls)}
    return keys


def toml_keys(block: str) -> set[str]:
    keys: set[str] = set()
    section = ""
    for line in block.splitlines():
        if m := SECTION_LINE.match(line):
            section = m.group(1)
        elif m := KEY_LINE.match(line):
            keys.add(f"{section}.{m.group(1)}" if section else m.group(1))
    return keys


def code_of(markdown: str) -> tuple[list[tuple[str, str]], list[str]]:
    """([(language, fenced block)], [inline code spans])."""
    blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(markdown)]
    return blocks, SPAN.findall(FENCE.sub("", markdown))


def readme_config_keys(markdown: str) -> set[str]:
    blocks, spans = code_of(markdown)
    keys: set[str] = set()
    for lang, block in blocks:
        if lang == "toml":
            keys |= toml_keys(block)
    sections = "|".join(config.SECTIONS)
    for span in spans:
        keys |= {f"{s}.{k}" for s, k in re.findall(rf"\b({sections})\.(\w+)", span)}
        keys |= {f"{s}.{k}" for s, k in re.findall(r"\[(\w+)\]\s+(\w+)\s*=", span)}
        if m := re.fullmatch(r"\s*(\w+)\s*(=.*)?", span):
            keys.add(m.group(1))
    return keys


def interface_config_keys(markdown: str) -> set[str]:
    """The keys of the first ```toml block of the '## Configuration' section, and of the
    first one of each section headed with its own config table (``## Web (`[web]`)``)."""
    keys: set[str] = set()
    for section in markdown.split("\n## ")[1:]:
        heading = section.split("\n", 1)[0]
        if heading.strip() == "Configuration" or re.search(r"`\[\w+\]`", heading):
            blocks, _ = code_of(section)
            keys |= next((toml_keys(block) for lang, block in blocks if lang == "toml"), set())
    return keys


def test_every_list_setting_is_documented() -> None:
    blocks, spans = code_of(README.read_text(encoding="utf-8"))
    code = "\n".join([block for _, block in blocks] + spans)
    result = CliRunner().invoke(cli, ["list", "set", "--help"])
    assert result.exit_code == 0, result.output
    missing_readme = [s.name for s in settings.SETTINGS
                      if not re.search(rf"(?<![\w-]){s.name}(?![\w-])", code)]
    missing_help = [s.name for s in settings.SETTINGS
                    if not re.search(rf"^\s*{s.name}:", result.output, re.M)]
    assert not missing_readme, f"list settings not documented in README.md: {missing_readme}"
    assert not missing_help, f"list settings missing from `list set --help`: {missing_help}"


# Keys an issue asked for that the contract's config block does not list yet (the contract is
# read-only here; each is documented in README and named in the note as an addition).
BEYOND_CONTRACT = {
    "intake.max_connections": "issue 9",
    "intake.idle_timeout": "issue 9",
    "intake.max_recipients_per_message": "issue 9",
    "archive.mbox": "issue 14",
    "database.lease_seconds": "issue 14",
    "archive.pages": "issue 14",
}


def test_every_config_key_is_documented() -> None:
    known = config_keys()
    readme = readme_config_keys(README.read_text(encoding="utf-8"))
    missing = sorted(known - readme)
    assert not missing, f"configuration keys not documented in README.md: {missing}"
    stale = sorted(k for k in readme - known if "." in k)
    assert not stale, f"README.md documents configuration keys that do not exist: {stale}"
    if INTERFACE.is_file():   # the contract, next to the repository (CI: ../shared)
        interface = interface_config_keys(INTERFACE.read_text(encoding="utf-8"))
        missing = sorted(known - interface - set(BEYOND_CONTRACT))
        assert not missing, f"keys missing from the config block of {INTERFACE}: {missing}"
        listed = sorted(set(BEYOND_CONTRACT) & interface)
        assert not listed, f"{INTERFACE} lists these now; drop them from BEYOND_CONTRACT: {listed}"
        stale = sorted(interface - known)
        assert not stale, f"{INTERFACE} names keys that config.py lacks: {stale}"


def test_readme_parser_finds_what_it_should() -> None:
    """The parsers themselves: a key only in prose is not 'documented'."""
    text = ("Set `delivery.verp = false` or\n`[intake]\nport = 25`.\nconnections in prose.\n"
            "```toml\ndata_dir = \"x\"\n[moderation]\n# token_lifetime_days = 3\n```\n")
    assert readme_config_keys(text) == {"delivery.verp", "intake.port", "data_dir",
                                        "moderation.token_lifetime_days"}
    assert interface_config_keys("# x\n## Configuration\n```toml\n[intake]\nhost = 1\n```\n"
                                 "## Other\n```toml\nsite_domain = 1\n```\n"
                                 "## Web (`[web]`)\nText.\n```toml\n[web]\nlisten = 1\n```\n"
                                 ) == {"intake.host", "web.listen"}
