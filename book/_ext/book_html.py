"""Small Sphinx fixes for the HTML book, so its pages load without console errors.

* ``sphinx-thebe`` registers its inline configuration script twice under Jupyter Book 1
  (``const THEBE_JS_URL`` declared twice is a SyntaxError in the browser): every page keeps one copy
  of each script.
* ``pydata-sphinx-theme`` logs "Got invalid theme mode" on a reader's first visit unless a default
  light/dark mode is set: the book opens in light mode (its figures are drawn on white).
* ``sphinx-book-theme`` offers the executed ``.ipynb`` only for Markdown notebooks: the chapters are
  Jupytext ``.py`` files, so each chapter's executed notebook (with its cell tags, outputs and hidden
  cells) is copied next to its source and added to the page's download menu beside the ``.py``.
"""
import shutil
from pathlib import Path


def _unique_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # the copies differ in how "no file" is spelled (None or ""), so compare what the browser gets
        key = (getattr(script, "filename", None) or "", repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique
    context.setdefault("default_mode", "light")


def _notebook_download(app, pagename, templatename, context, doctree):
    if context.get("ipynb_source") or context.get("page_source_suffix") != ".py":
        return
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.is_file():
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    app.connect("html-page-context", _notebook_download, priority=450)  # before the theme's buttons (501)
    app.connect("html-page-context", _unique_scripts, priority=900)  # after every other extension
    return {"parallel_read_safe": True, "parallel_write_safe": True}
