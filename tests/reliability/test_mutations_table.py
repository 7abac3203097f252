"""The mutation table (tests/reliability/mutations.py) still finds every piece of code it mutates, exactly once, and
every test it names: a protection moved or renamed without its mutation fails here, in `make test`, not months later
in `make mutations`."""

import ast

import pytest

from tests.reliability import mutations


@pytest.mark.parametrize("mutation", mutations.MUTATIONS, ids=[m.name for m in mutations.MUTATIONS])
def test_the_mutation_finds_its_code_and_its_test(mutation):
    mutations.check_test_exists(mutation)
    _, original, changed = mutations.mutated(mutation)
    assert changed != original
    if mutation.path.endswith(".py"):
        ast.parse(changed)  # a mutation must change behaviour, not break the syntax


def test_names_are_unique():
    names = [mutation.name for mutation in mutations.MUTATIONS]
    assert len(names) == len(set(names))
