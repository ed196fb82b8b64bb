import pytest

from disk import usage


def test_size_uses_decimal_units():
    assert usage.size(1_234_567) == "1.2 MB"
    assert usage.size(999) == "999 Bytes"


def test_summarize_empty():
    assert usage.summarize([]) == "no files"


def test_summarize_one_file():
    assert usage.summarize([("a.log", 2_000)]) == "1 file, 2.0 kB total, largest: a.log (2.0 kB)"


def test_summarize_names_the_largest():
    entries = [("a.log", 1_000), ("b.bin", 800_000), ("c.txt", 200_000)]
    assert usage.summarize(entries) == "3 files, 1.0 MB total, largest: b.bin (800.0 kB)"


@pytest.mark.parametrize("part,whole,expected", [(1, 4, 25.0), (1, 3, 33.3), (5, 0, 0.0)])
def test_share(part, whole, expected):
    assert usage.share(part, whole) == expected


def test_age():
    assert usage.age(90) == "a minute"
    assert usage.age(7200) == "2 hours"
