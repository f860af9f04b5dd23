"""Shared fixtures: a short chain of real rounds (built once per module)."""

from __future__ import annotations

import pytest

from .net import LedgerNet, fed_for


@pytest.fixture(scope="module")
def net() -> LedgerNet:
    """9 peers, two groups a round, peer 2 excluded whenever selected; 4 rounds."""
    n = LedgerNet(fed_for(), 9, attackers=[2])
    n.run(4)
    return n
