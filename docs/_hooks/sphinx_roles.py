"""MkDocs hook: the docstrings are written with Sphinx roles (:class:`Arch`, :meth:`flops`) and
literal-block colons ("in this order::"), which mkdocstrings renders as text. Drop the role names
and the doubled colon from the rendered HTML of the reference pages, leaving the code spans."""
import re

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|data|exc|obj|const):(?=<code>)")
_LITERAL_COLON = re.compile(r"(?<=\w)::</p>")


def on_page_content(html, page, **kwargs):
    if not page.file.src_uri.startswith("reference/"):
        return html
    return _LITERAL_COLON.sub(":</p>", _ROLE.sub("", html))
