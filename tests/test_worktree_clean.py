"""Runs last (the file name sorts after every other test module): the tests of this session left the
checkout as they found it, no new, changed or deleted file (the snapshot is taken in conftest.py)."""
import pytest
from _helpers import WORKTREE_KEY, worktree_state


def test_tests_wrote_nothing_into_the_checkout(request):
    before = request.config.stash.get(WORKTREE_KEY, None)
    if before is None:
        pytest.skip("not a git checkout (or git is unavailable)")
    after = worktree_state()
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, f"the tests created, changed or deleted these files in the checkout: {changed}"
