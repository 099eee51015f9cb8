"""Training stages. `sft`: streaming-thoughts fine-tuning of the speech LM (one process, or torchrun + FSDP)."""
