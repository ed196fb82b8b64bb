"""Summarises file sizes and ages for people, using the humanize package."""
import humanize


def size(n_bytes):
    """`1234567` -> `'1.2 MB'` (decimal units, as disk vendors count)."""
    return humanize.naturalsize(n_bytes)


def summarize(entries):
    """One line about `entries`, a list of (name, size in bytes) pairs."""
    if not entries:
        return "no files"
    total = sum(n for _, n in entries)
    name, largest = max(entries, key=lambda e: e[1])
    files = "file" if len(entries) == 1 else "files"
    return f"{humanize.intcomma(len(entries))} {files}, {size(total)} total, largest: {name} ({size(largest)})"


def share(part, whole):
    """Percentage of `whole` taken by `part`, rounded to one decimal."""
    if whole == 0:
        return 0.0
    return round(100.0 * part / whole, 1)


def age(seconds):
    """`90` -> `'a minute'`, `7200` -> `'2 hours'`."""
    return humanize.naturaldelta(seconds)
