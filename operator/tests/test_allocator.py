"""allocator.allocator_env: the operator re-runs itself once with glibc's malloc, unless PYTHONMALLOC is chosen."""

from __future__ import annotations

from k3svirt_operator.allocator import allocator_env


def test_unset_gets_glibc_malloc_and_keeps_the_rest() -> None:
    env = allocator_env({"PATH": "/bin", "K3SVIRT_NODE_NAME": "n1"})
    assert env == {"PATH": "/bin", "K3SVIRT_NODE_NAME": "n1", "PYTHONMALLOC": "malloc"}


def test_a_chosen_allocator_is_left_alone() -> None:
    assert allocator_env({"PYTHONMALLOC": "malloc"}) is None
    assert allocator_env({"PYTHONMALLOC": "pymalloc"}) is None  # whoever starts it decided
    assert allocator_env({"PYTHONMALLOC": ""}) is None  # set, even empty: no second re-run
