"""The contract between the harness, the defenses and the attacks, and how components plug in.

A defense is two roles that share nothing but ``WirePayload``s and public setup facts: a
``ClientRole`` (sees a client's update, holds keys, ``protect``/``finalize``) and a ``ServerRole``
(``aggregate``, and ``observe``/``known_start``/``known_init``/``start_from_upload``, from which the
engine builds the attacker's view out of the server's transcript alone); a ``Wrapper`` sits on any defense it can wrap. An attack sees only
an ``AttackerView``; the harness alone holds the true private batch and scores reconstructions.
Defenses, attacks and engines are found through entry points (``plugins``); a ``+``-joined name is a
stack of wrappers over a defense (``stacks``). A plug-in author imports everything from here.
"""

from benchmark.contract.attack import (
    ATTACK_MODES,
    ATTACK_TARGETS,
    CONTROL_DEFENSE,
    CONTROL_TEST_SCENARIO,
    MEMBERSHIP_METRICS,
    RECONSTRUCTION_METRICS,
    VIEW_OFFERS,
    Abstain,
    Attack,
    AttackParams,
    Control,
    control_label,
    gradient_probe,
    view_lacks,
)
from benchmark.contract.defense import (
    ENCRYPTS,
    ClientRole,
    Defense,
    SecretSum,
    ServerRole,
    SumPrivatizer,
    TierFacts,
)
from benchmark.contract.messages import (
    ClientInfo,
    ClientUpdate,
    FederationInfo,
    LoRAFactors,
    WirePayload,
    json_default,
)
from benchmark.contract.views import (
    RECONSTRUCTION_STATUS,
    START_KNOWN,
    AttackerView,
    ObservedModule,
    Reconstruction,
    StartKnowledge,
    StartSpace,
)
from benchmark.contract.wrappers import Stacked, Wrapper, WrapperClient, WrapperServer

__all__ = [
    "ATTACK_MODES", "ATTACK_TARGETS", "CONTROL_DEFENSE", "CONTROL_TEST_SCENARIO", "ENCRYPTS", "MEMBERSHIP_METRICS", "RECONSTRUCTION_METRICS",
    "RECONSTRUCTION_STATUS", "START_KNOWN", "VIEW_OFFERS", "Abstain", "Attack", "AttackParams", "AttackerView",
    "ClientInfo", "ClientRole", "ClientUpdate", "Control", "Defense", "FederationInfo", "LoRAFactors", "ObservedModule",
    "Reconstruction", "SecretSum", "ServerRole", "Stacked", "StartKnowledge", "StartSpace", "SumPrivatizer", "TierFacts", "WirePayload", "Wrapper",
    "WrapperClient", "WrapperServer", "control_label", "gradient_probe", "json_default", "view_lacks",
]
