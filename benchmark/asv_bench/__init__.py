"""asv benchmarks of shebench: time_ (CKKS, FlexLoRA aggregation, SHE-LoRA round steps), track_ (wire bytes,
aggregation error, attack success, accuracy gap; every one lower-is-better) and peakmem_ (a client round).

asv imports this folder as the top-level package ``asv_bench`` and runs it against older commits of the
project too, so nothing here may import project code at module level: project modules are imported
inside ``setup`` and a missing one skips the benchmark (``NotImplementedError``).
"""
