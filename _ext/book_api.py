"""The API reference page (``api.md``): one section per module of ``book``.

The directive::

    .. book-module:: book.attention

       Optional prose shown above the module's members.

writes a section titled with the module name, a line linking to the chapter
that builds it (read from the banner ``# Generated from chapters/NN_x.ipynb``
at the top of a generated module), the directive's content, and the module's
autodoc (``automodule`` with its members in source order).

A module that does not exist yet (its chapter is still being written) is left
out without a warning, so the page can list every planned module from the
start; it appears on the first build after the module does.

Docstrings in ``book`` are plain text that states shapes, one name per line::

    query: (..., T_q, d_k)
    dropout: optional module applied to the weights
             (the returned weights are the ones before dropout).

reStructuredText would run those lines together, warn about the hanging
indent and read ``h*d_k`` as the start of emphasis. ``plain_docstring`` turns
such text into the reStructuredText it means; docstrings written as
reStructuredText pass through unchanged.
"""
import importlib.util
import re
from pathlib import Path

from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

BANNER = re.compile(r"#\s*Generated from (?P<notebook>chapters/[\w.-]+)\.ipynb\b")


# ------------------------------------------------------------------ directive


def _module_file(module):
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    return Path(spec.origin)


class BookModule(SphinxDirective):
    required_arguments = 1
    has_content = True

    def run(self):
        module = self.arguments[0]
        if not re.fullmatch(r"book(\.\w+)+", module):
            raise self.error(f"book-module expects a module of the book package such as book.attention, got {module!r}")
        # Sphinx counts a missing dependency as changed, so this page is
        # rebuilt on every build until the module exists.
        self.env.note_dependency(str(Path(*module.split(".")).with_suffix(".py")))
        path = _module_file(module)
        if path is None:
            logger.info(f"[book-module] {module} does not exist yet; left out of {self.env.docname}")
            return []

        with open(path, encoding="utf-8") as f:
            banner = BANNER.match(f.readline())
        if banner is None:
            origin = "Hand-written, not generated from a chapter."
        elif banner["notebook"] in self.env.found_docs:
            origin = f"Built in :doc:`/{banner['notebook']}` (its ``export`` cells)."
        else:
            origin = f"Generated from ``{banner['notebook']}.ipynb``, which is not in the book yet."

        title = f"``{module}``"
        text = "\n".join([
            title,
            "=" * len(title),
            "",
            origin,
            "",
            *self.content,
            "",
            f".. automodule:: {module}",
            "   :members:",
            "   :member-order: bysource",
            "   :show-inheritance:",
            "",
        ])
        return self.parse_text_to_nodes(text, allow_section_headings=True)


# ----------------------------------------------------------------- docstrings

# "query: ...", "q_proj, k_proj: ...", "Post-norm (the paper): ...": a short label, a colon, text.
LABELLED = re.compile(r"^(?![.:>|*+-] )[^\s:`][^:`]{0,30}:\s+\S")
# "h*d_k", "2*x": a product, not the start of *emphasis*.
PRODUCT = re.compile(r"(?<=[\w)\]])\*(?=[\w(\[])")
LITERAL = re.compile(r"(``.+?``|`[^`]+`_?)")


def _indent(line):
    return len(line) - len(line.lstrip())


def _escape_products(line):
    parts = LITERAL.split(line)
    return "".join(part if i % 2 else PRODUCT.sub(r"\\*", part) for i, part in enumerate(parts))


def _is_prose(line):
    """A top-level line of a paragraph (not a directive, field, list, table or doctest)."""
    stripped = line.strip()
    return (
        bool(stripped)
        and _indent(line) == 0
        and not stripped.startswith(("..", ":", ">>>", "|", "- ", "* ", "+ ", "=", "#"))
        and not re.match(r"^(\d+|#|[a-zA-Z])[.)] ", stripped)
    )


def plain_docstring(lines):
    """Rewrite plain-text docstring lines into the reStructuredText they mean (a new list).

    - a line indented under a labelled line, or under a line of a paragraph,
      continues it (a hanging indent);
    - two or more consecutive labelled lines (``name: text``) keep their line
      breaks (a line block);
    - ``*`` between two word characters is a product, escaped.
    Literal blocks (after ``::``), directives and doctests are left alone.
    """
    joined = []
    literal_indent = None  # inside a literal block: the indentation of the line that opened it
    for line in lines:
        if literal_indent is not None:
            if line.strip() and _indent(line) <= literal_indent:
                literal_indent = None
            else:
                joined.append(line)
                continue
        if line.rstrip().endswith("::"):
            literal_indent = _indent(line)
        previous = joined[-1] if joined else ""
        before = joined[-2] if len(joined) > 1 else ""
        hanging = (
            line.strip()
            and _indent(line) > 0
            and _is_prose(previous)
            and not previous.rstrip().endswith("::")
            and (LABELLED.match(previous) or _is_prose(before))
        )
        if hanging:
            joined[-1] = previous.rstrip() + " " + line.strip()
        else:
            joined.append(line)

    result = []
    i = 0
    while i < len(joined):
        j = i
        while j < len(joined) and _is_prose(joined[j]) and LABELLED.match(joined[j]) and not joined[j].rstrip().endswith("::"):
            j += 1
        if j - i >= 2:
            if result and result[-1].strip():
                result.append("")
            result += ["| " + _escape_products(line) for line in joined[i:j]]
            if j < len(joined) and joined[j].strip():
                result.append("")
            i = j
            continue
        line = joined[i]
        result.append(_escape_products(line) if _is_prose(line) else line)
        i += 1
    return result


def process_docstring(app, what, name, obj, options, lines):
    if name.startswith("book."):
        lines[:] = plain_docstring(lines)


def _public_name(cls):
    """``torch.nn.Module`` rather than ``torch.nn.modules.module.Module``."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        prefix = ".".join(parts[:end])
        try:
            if getattr(importlib.import_module(prefix), cls.__qualname__, None) is cls:
                return f"{prefix}.{cls.__qualname__}"
        except ImportError:
            break
    return f"{cls.__module__}.{cls.__qualname__}"


def process_bases(app, name, obj, options, bases):
    # A base class from outside the book (torch.nn.Module) is named by its public path;
    # conf's nitpick_ignore_regex lets the reference stay unresolved (there is no intersphinx).
    for i, base in enumerate(bases):
        if isinstance(base, type) and not base.__module__.startswith(("book", "builtins")):
            bases[i] = f":py:class:`{_public_name(base)}`"


def setup(app):
    app.add_directive("book-module", BookModule)
    app.connect("autodoc-process-docstring", process_docstring)
    app.connect("autodoc-process-bases", process_bases)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
