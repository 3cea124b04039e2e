"""Attacks, one module each, registered by name with lazy targets."""

from benchmark.registry import Registry

ATTACKS = Registry("attack")

for _name, _target in {
    "dager": "attacks.dager:DAGER",
    "token_leak": "attacks.token_leak:TokenLeak",
    "subspace_rank": "attacks.subspace_rank:SubspaceRank",
    "grad_match": "attacks.grad_match:GradMatch",
    "mia": "attacks.mia:MembershipInference",
    "utr": "attacks.utr:UTR",
    "fedspy": "attacks.fedspy:FedSpy",
}.items():
    ATTACKS.register(_name, _target)
