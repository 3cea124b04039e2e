"""The attacks' shared toolkit: what the registered attacks in ``attacks/`` build on, none of it an attack.

Span geometry of observed LoRA updates (``subspace``), the per-layer span checks and token decoding
that DAGER, FedSpy, UTR and the ranking baselines share (``decoding``), forward hooks and captured
module inputs of the public model (``probing``, ``lorahooks``), the language-model prior
(``lmprior``), label completion (``labels``), discrete refinement (``refine``), the public template's
token ids (``textutil``) and what an attack may assume about a view before it runs (``preconditions``:
abstention reasons and caveats). Keeping it apart leaves ``attacks/`` listing exactly the registered
attacks, and lets the code fingerprint follow only the toolkit modules an attack really imports.
"""
