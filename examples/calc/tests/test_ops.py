import pytest

from calc import ops


def test_add():
    assert ops.add(2, 3) == 5


def test_sub():
    assert ops.sub(2, 3) == -1


def test_mul():
    assert ops.mul(4, 3) == 12


def test_div():
    assert ops.div(9, 3) == 3


def test_div_by_zero():
    with pytest.raises(ZeroDivisionError):
        ops.div(1, 0)


def test_mean():
    assert ops.mean([1, 2, 3, 4]) == 2.5


def test_mean_of_nothing():
    with pytest.raises(ValueError):
        ops.mean([])


@pytest.mark.parametrize("a,b,want", [(1, 1, 2), (-1, 1, 0), (0.5, 0.25, 0.75)])
def test_add_table(a, b, want):
    assert ops.add(a, b) == want
