"""Small additions for the book's own pages (intro, bibliography) and one Sphinx fix.

- ``{chapter}`05_multi_head_attention``` links to ``chapters/05_multi_head_attention``
  with the chapter's title. While that chapter is not in the book yet, it shows
  a plain title instead of a broken link (the browser test checks that the
  introduction links to every chapter of the table of contents).
- The bibliography style ``authoryear``: the ``plain`` style (sorted by
  author, then year) with labels such as "Vaswani et al., 2017", matching the
  author-year citations in the text.
- A workaround for a Sphinx 7.4 bug that puts inline scripts twice on every
  page (see ``_name_inline_scripts``).
"""
import re
from collections import Counter

from docutils import nodes
from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from sphinx.util import logging
from sphinx.util.docutils import SphinxRole

logger = logging.getLogger(__name__)


# -------------------------------------------------------------- chapter links


class ChapterRole(SphinxRole):
    """``{chapter}`07_transformer``` or ``{chapter}`the full model <07_transformer>```."""

    def run(self):
        match = re.fullmatch(r"\s*(?:(?P<title>.+?)\s*<(?P<target>[^<>]+)>|(?P<bare>[^<>]+?))\s*", self.text)
        if match is None:
            msg = self.inliner.reporter.error(f"chapter: expected a chapter name such as 02_attention, got {self.text!r}")
            return [self.inliner.problematic(self.rawtext, self.rawtext, msg)], [msg]
        target = (match["target"] or match["bare"]).strip()
        docname = f"chapters/{target}"
        title = match["title"]
        if docname in self.env.found_docs:
            text = f"{title} </{docname}>" if title else f"/{docname}"
            doc_role = self.env.get_domain("std").role("doc")
            return doc_role("std:doc", self.rawtext, text, self.lineno, self.inliner, self.options, self.content)
        logger.info(f"[chapter] {docname} is not in the book yet; {self.env.docname} shows its name unlinked")
        words = re.sub(r"^\d+_", "", target).replace("_", " ")
        return [nodes.inline(self.rawtext, title or words.capitalize(), classes=["chapter-unwritten"])], []


# ------------------------------------------------------- bibliography labels


def _surnames(person):
    return str(Text.from_latex(" ".join(person.prelast_names + person.last_names)))


class AuthorYearLabels(BaseLabelStyle):
    """"Rush, 2018", "Glorot and Bengio, 2010", "Vaswani et al., 2017" (then 2017a, 2017b)."""

    def _label(self, entry):
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        if not people:
            names = entry.fields.get("key", entry.key)
        elif len(people) == 1:
            names = _surnames(people[0])
        elif len(people) == 2:
            names = f"{_surnames(people[0])} and {_surnames(people[1])}"
        else:
            names = f"{_surnames(people[0])} et al."
        return f"{names}, {entry.fields.get('year', 'n.d.')}"

    def format_labels(self, sorted_entries):
        labels = [self._label(entry) for entry in sorted_entries]
        repeated = {label for label, count in Counter(labels).items() if count > 1}
        seen = Counter()
        for label in labels:
            if label in repeated:
                seen[label] += 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
            else:
                yield label


class AuthorYearStyle(PlainStyle):
    default_label_style = "authoryear"


register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels)
register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)


# --------------------------------------------------- duplicate inline scripts


def _name_inline_scripts(app, builder):
    """Work around a Sphinx 7.4 bug that puts inline scripts twice on every page.

    An extension that calls ``app.add_js_file(None, body=...)`` after the
    builder started (sphinx-thebe and sphinx-togglebutton do) has its script
    registered with the file name ``None``; ``prepare_writing`` adds it again
    as ``''``, so each page declares sphinx-thebe's ``const THEBE_JS_URL`` twice
    and the browser reports "Identifier 'THEBE_JS_URL' has already been
    declared". Naming those scripts ``''`` before writing turns the second
    registration into a duplicate, which Sphinx skips.
    """
    scripts = getattr(builder, "_js_files", None)
    if not scripts:
        return
    from sphinx.builders.html._assets import _JavaScript

    scripts[:] = [
        _JavaScript("", priority=js.priority, **js.attributes)
        if isinstance(js, _JavaScript) and js.filename is None else js
        for js in scripts
    ]


def setup(app):
    app.add_role("chapter", ChapterRole())
    app.connect("write-started", _name_inline_scripts)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
