"""Small Sphinx fixes for the HTML book, so its pages load without console errors.

* ``sphinx-thebe`` registers its inline configuration script twice under Jupyter Book 1
  (``const THEBE_JS_URL`` declared twice is a SyntaxError in the browser): every page keeps one copy
  of each script.
* ``pydata-sphinx-theme`` logs "Got invalid theme mode" on a reader's first visit unless a default
  light/dark mode is set: the book opens in light mode (its figures are drawn on white).
"""


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


def setup(app):
    app.connect("html-page-context", _unique_scripts, priority=900)  # after every other extension
    return {"parallel_read_safe": True, "parallel_write_safe": True}
