"""The federated round loop, apart from how its clients are reached: a server-side round driver
(``driver``) that samples clients, runs the protocol steps over the metered ``Channel``, records the
server's transcript, probes and evaluates; client nodes (``node``) that own their shards, their LoRA
host, local training and the defense's client role; the one small interface between the two
(``endpoint``); what both build from a scenario and a seed (``assets``, ``sampling``); and the
referee's parts that only the harness holds (``referee``, ``probe``, ``reference``). Engines
(``benchmark.engines``) differ only in the endpoint they hand the driver.
"""
