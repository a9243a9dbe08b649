"""edgetune on Flower: federated LoRA fine-tuning (see examples/flower/README in the main README)."""
