"""Losses: NT-Xent (optionally over the global DDP batch), the identity-aware SSL objective, and the
sequence-restricted contrastive loss of the Re-ID net."""

from reid.core.losses.identity_ssl import IdentityAwareSSLLoss
from reid.core.losses.metric import SequencePairLoss, sequence_pair_indices
from reid.core.losses.ntxent import NTXentLoss

__all__ = ["IdentityAwareSSLLoss", "NTXentLoss", "SequencePairLoss", "sequence_pair_indices"]
