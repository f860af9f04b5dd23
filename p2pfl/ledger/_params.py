"""Re-export: :class:`LedgerParams` lives in the federation layer because the
federation file carries it (a ``[ledger]`` table is part of the federation id), and
the federation layer may not import the ledger layer."""

from p2pfl.federation.ledger_params import LedgerParams

__all__ = ["LedgerParams"]
