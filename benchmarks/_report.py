"""Console tables shared by the benchmark scripts."""


def table(title: str, head: list, rows: list, markdown: bool = False) -> None:
    """Print ``rows`` (lists of strings, one per column of ``head``) right-aligned under ``title``; with
    ``markdown`` print the same table again as a Markdown table, ready for a book page."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(title)
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    print()
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---:" for _ in head) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        print()
