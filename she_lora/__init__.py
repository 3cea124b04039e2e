"""SHE-LoRA as a library: selective CKKS encryption of sensitive LoRA-A columns for federated
fine-tuning with heterogeneous ranks. Imports nothing from the benchmark harness."""
