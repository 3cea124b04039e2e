"""Peak memory of one federated round on the tiny scenario (model, two clients' local training, the
defense's protect and aggregate, the clients' finalize).

asv's peakmem_ is the process's maximum RSS, setup included; the federation is therefore built in the
measured method too, so the number is what one round of the whole in-process engine needs. plain_lora
is the baseline, she_lora the defense whose client-side overhead matters most.
"""

from __future__ import annotations

from .common import Bench, Steps, make_defense, need_any, seed_all, tiny_scenario


class TinyRound(Bench):
    """Maximum RSS of building the tiny federation and running its first round."""

    version = "1"
    params = [["plain_lora", "she_lora"]]
    param_names = ["defense"]

    def setup(self, defense: str) -> None:
        seed_all()
        self.engine = need_any("benchmark.engines.inproc", "benchmark.federated")
        self.scenario = tiny_scenario()
        make_defense(defense)  # skip early when the defense is missing at this commit
        self.name = defense

    def peakmem_round(self, defense: str) -> None:
        if hasattr(self.engine, "build_driver"):  # the round driver, clients behind an endpoint
            driver = self.engine.build_driver(self.scenario, make_defense(self.name), 0)
            need_any("benchmark.federation.protocol", "benchmark.protocol").setup_roles(driver.parties, driver.fed, driver.channel)
            driver.run_round(1)
            return
        fed = self.engine.Federation(self.scenario, make_defense(self.name), 0)
        if hasattr(fed, "channel"):  # the roles API: setup travels over the engine's channel
            need_any("benchmark.federation.protocol", "benchmark.protocol").setup_roles(fed.defense, fed.fed, fed.channel)
        else:
            Steps(fed.defense).setup(fed.fed)
        fed.run_round(1)
