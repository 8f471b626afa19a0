"""mkdocs hook (mkdocs.yml, ``hooks:``): the site's home page is README.md, with its links into docs/ made
relative to docs/, so README reads right on a repository page and on the site alike."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

README = Path(__file__).resolve().parents[1] / "README.md"
_DOCS_LINK = re.compile(r"\]\(docs/")


def on_files(files: Files, config) -> Files:
    home = _DOCS_LINK.sub("](", README.read_text())
    files.append(File.generated(config, "index.md", content=home))
    return files
