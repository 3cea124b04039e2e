"""Defenses, one module each, registered by name with lazy targets (listing imports nothing heavy)."""

from benchmark.registry import Registry

DEFENSES = Registry("defense")

for _name, _target in {
    "plain_lora": "defenses.plain_lora:PlainLoRA",
    "dp": "defenses.dp:ClientLevelDP",
    "dp_sgd": "defenses.dp_sgd:DPSGD",
    "full_he": "defenses.full_he:FullHE",
    "maskcrypt": "defenses.maskcrypt:MaskCrypt",
    "she_lora": "defenses.she_lora:SHELoRADefense",
}.items():
    DEFENSES.register(_name, _target)
