"""mkdocs hooks for the documentation site (mkdocs.yml's ``hooks:``).

The docstrings use Sphinx's cross-reference roles (``:class:`rmsprop.RMSprop```), which
``help()`` and IDEs show as they are and mkdocstrings' Google-style parser leaves in the
text: on the API page they would read ":class:rmsprop.RMSprop". This hook turns each into
its name in code, as a link where the page holds that object's entry.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|mod|func|meth|attr|data|exc|obj):<code>~?([^<]+)</code>")


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    anchors = set(re.findall(r'id="([^"]+)"', html))

    def name(match: re.Match) -> str:
        target = match.group(1)
        code = f"<code>{target}</code>"
        return f'<a href="#{target}">{code}</a>' if target in anchors else code

    return _ROLE.sub(name, html)
