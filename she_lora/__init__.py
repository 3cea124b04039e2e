"""SHE-LoRA as a library: selective CKKS encryption of sensitive LoRA-A columns for federated
fine-tuning with heterogeneous ranks. Imports nothing from the benchmark harness.

Modules, in protocol order:

- ``sensitivity``: S_j = sum_k |A_kj| ||x_j||, column budgets k = ceil(b n), top-k lists;
- ``ope``: keyed order-preserving codes for column indices (clients hold the key);
- ``negotiation``: top-k lists -> one ordered global list per module (nested prefixes);
- ``negotiation_gp``: the per-tier shares tuned to the paper's Eq. 14 with scikit-optimize (opt-in);
- ``permutation``: the shared column swap and its reverse-order inverse;
- ``layout`` / ``plan``: who packs which value where, derived from public facts only (server lift:
  bands of modules that share rotations and encoded weights);
- ``ckks``: packed CKKS (complex slots, seeded symmetric encryption), public vs secret contexts, and
  power-of-two magnitude exponents (``exponent_of``, ``agree_exponent``) that keep the relative
  error independent of the values' size;
- ``lift``: the server-side lift Enc(a) -> Enc(w s B a) for a whole band at once;
- ``reparam``: plaintext column-aware aggregation and the exact fusion of both parts;
- ``client`` / ``server``: the two roles; the server side only ever loads a public context;
- ``lowrank``: FlexLoRA's stacked-factor SVD (shared with the harness), optionally only the leading
  ``rank`` components, single-threaded by default (``SHE_LORA_THREADS``).

Imports between these modules form a DAG (``ckks`` imports none of them; a test checks it).
"""
